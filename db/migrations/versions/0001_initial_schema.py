"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24 23:10:30.581591
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('pipelines',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('dataset_root', sa.String(length=1000), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('submitted_by', sa.String(length=200), nullable=False),
    sa.Column('reused_from_id', sa.Integer(), nullable=True),
    sa.Column('error_summary', sa.String(length=500), nullable=True),
    sa.ForeignKeyConstraint(['reused_from_id'], ['pipelines.id'], name=op.f('fk_pipelines_reused_from_id_pipelines'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pipelines'))
    )
    with op.batch_alter_table('pipelines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pipelines_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_pipelines_status'), ['status'], unique=False)

    op.create_table('stages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pipeline_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('queue', sa.String(length=16), nullable=False),
    sa.Column('depends_on', sa.JSON(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('attempts_base', sa.Integer(), nullable=False),
    sa.Column('worker_host', sa.String(length=200), nullable=True),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('error_summary', sa.String(length=500), nullable=True),
    sa.Column('traceback', sa.Text(), nullable=True),
    sa.Column('log_path', sa.String(length=1000), nullable=True),
    sa.Column('output_dir', sa.String(length=1000), nullable=True),
    sa.Column('input_hash', sa.String(length=64), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('celery_task_id', sa.String(length=64), nullable=True),
    sa.Column('progress_done', sa.Integer(), nullable=False),
    sa.Column('progress_failed', sa.Integer(), nullable=False),
    sa.Column('progress_total', sa.Integer(), nullable=False),
    sa.Column('progress_what', sa.String(length=200), nullable=True),
    sa.Column('reused_from_id', sa.Integer(), nullable=True),
    sa.Column('summary', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['pipeline_id'], ['pipelines.id'], name=op.f('fk_stages_pipeline_id_pipelines'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reused_from_id'], ['stages.id'], name=op.f('fk_stages_reused_from_id_stages'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stages')),
    sa.UniqueConstraint('pipeline_id', 'kind', name=op.f('uq_stages_pipeline_id_kind'))
    )
    with op.batch_alter_table('stages', schema=None) as batch_op:
        batch_op.create_index('ix_stages_input_hash', ['input_hash', 'status'], unique=False)
        batch_op.create_index('ix_stages_status_updated_at', ['status', 'updated_at'], unique=False)

    op.create_table('artefacts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('stage_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('path', sa.String(length=1000), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['stage_id'], ['stages.id'], name=op.f('fk_artefacts_stage_id_stages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_artefacts')),
    sa.UniqueConstraint('stage_id', 'path', name=op.f('uq_artefacts_stage_id_path'))
    )
    with op.batch_alter_table('artefacts', schema=None) as batch_op:
        batch_op.create_index('ix_artefacts_stage_id_kind', ['stage_id', 'kind'], unique=False)

    op.create_table('epoch_metrics',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('stage_id', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('train_loss', sa.Float(), nullable=True),
    sa.Column('val_loss', sa.Float(), nullable=True),
    sa.Column('val_accuracy', sa.Float(), nullable=True),
    sa.Column('lr', sa.Float(), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.Column('samples_per_s', sa.Float(), nullable=True),
    sa.Column('extra', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['stage_id'], ['stages.id'], name=op.f('fk_epoch_metrics_stage_id_stages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_epoch_metrics')),
    sa.UniqueConstraint('stage_id', 'epoch', name=op.f('uq_epoch_metrics_stage_id_epoch'))
    )
    op.create_table('extraction_items',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('stage_id', sa.Integer(), nullable=False),
    sa.Column('pipeline_id', sa.Integer(), nullable=False),
    sa.Column('video_id', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.Column('output_path', sa.String(length=1000), nullable=True),
    sa.Column('worker_host', sa.String(length=200), nullable=True),
    sa.Column('celery_task_id', sa.String(length=64), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['pipeline_id'], ['pipelines.id'], name=op.f('fk_extraction_items_pipeline_id_pipelines'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['stage_id'], ['stages.id'], name=op.f('fk_extraction_items_stage_id_stages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_extraction_items')),
    sa.UniqueConstraint('stage_id', 'video_id', name=op.f('uq_extraction_items_stage_id_video_id'))
    )
    with op.batch_alter_table('extraction_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_extraction_items_pipeline_id'), ['pipeline_id'], unique=False)
        batch_op.create_index('ix_extraction_items_stage_id_status', ['stage_id', 'status'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('extraction_items', schema=None) as batch_op:
        batch_op.drop_index('ix_extraction_items_stage_id_status')
        batch_op.drop_index(batch_op.f('ix_extraction_items_pipeline_id'))

    op.drop_table('extraction_items')
    op.drop_table('epoch_metrics')
    with op.batch_alter_table('artefacts', schema=None) as batch_op:
        batch_op.drop_index('ix_artefacts_stage_id_kind')

    op.drop_table('artefacts')
    with op.batch_alter_table('stages', schema=None) as batch_op:
        batch_op.drop_index('ix_stages_status_updated_at')
        batch_op.drop_index('ix_stages_input_hash')

    op.drop_table('stages')
    with op.batch_alter_table('pipelines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pipelines_status'))
        batch_op.drop_index(batch_op.f('ix_pipelines_created_at'))

    op.drop_table('pipelines')
