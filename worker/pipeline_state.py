"""The pipeline's state: the one module that writes ``pipelines.status`` (and its timestamps).

A pipeline's status is derived from its stages (:func:`refresh_pipeline_status`); :func:`advance`
enqueues every pending stage whose dependencies are done. Every enqueue is a conditional UPDATE
(``… WHERE status = 'pending'``) so two workers advancing the same pipeline at once never enqueue a
stage twice, and messages are sent only *after* the commit.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import ACTIVE_STATES, DONE_STATES, Pipeline, PipelineStatus, Stage, StageStatus, utcnow
from db.session import rowcount
from worker.dispatch import send_all


class OrchestrationError(ValueError):
    """An action that the current state does not allow (the API turns it into a 409/400)."""


def lock_pipeline(session: Session, pipeline_id: int) -> Pipeline:
    """Row lock on PostgreSQL (serialises concurrent advances); SQLite serialises writers anyway."""
    pipeline = session.scalars(
        select(Pipeline).where(Pipeline.id == pipeline_id).with_for_update().execution_options(populate_existing=True)
    ).one_or_none()
    if pipeline is None:
        raise OrchestrationError(f"no pipeline {pipeline_id}")
    return pipeline


def stages_of(session: Session, pipeline_id: int) -> list[Stage]:
    return list(
        session.scalars(
            select(Stage).where(Stage.pipeline_id == pipeline_id).order_by(Stage.position)
            .execution_options(populate_existing=True)
        )
    )


def refresh_pipeline_status(session: Session, pipeline: Pipeline, stages: list[Stage] | None = None) -> str:
    """Derive the pipeline's status from its stages (no commit)."""
    stages = stages if stages is not None else stages_of(session, pipeline.id)
    states = [s.status for s in stages]
    now = utcnow()
    if any(s in ACTIVE_STATES for s in states):
        new = PipelineStatus.RUNNING
    elif all(s in DONE_STATES for s in states):
        new = PipelineStatus.SUCCEEDED
    elif any(s == StageStatus.FAILED for s in states):
        new = PipelineStatus.FAILED
    elif any(s == StageStatus.CANCELLED for s in states):
        new = PipelineStatus.CANCELLED
    else:
        new = PipelineStatus.RUNNING if pipeline.started_at else PipelineStatus.PENDING
    if new == PipelineStatus.RUNNING and pipeline.started_at is None and any(
        s in (StageStatus.RUNNING, StageStatus.SUCCEEDED) for s in states
    ):
        pipeline.started_at = now
    if new in (PipelineStatus.SUCCEEDED, PipelineStatus.FAILED, PipelineStatus.CANCELLED):
        if pipeline.status != new or pipeline.finished_at is None:
            pipeline.finished_at = now
        failed = [s for s in stages if s.status == StageStatus.FAILED]
        pipeline.error_summary = f"{failed[0].kind}: {failed[0].error_summary}" if failed else None
    else:
        pipeline.finished_at = None
        pipeline.error_summary = None
    pipeline.status = new
    return new


def refresh(session: Session, pipeline_id: int) -> None:
    """:func:`refresh_pipeline_status` by id, after a stage changed state (no commit)."""
    pipeline = session.get(Pipeline, pipeline_id, populate_existing=True)
    if pipeline is not None:
        refresh_pipeline_status(session, pipeline)


def reopen(pipeline: Pipeline) -> None:
    """A finished pipeline gets work again (a re-run, the optional benchmark): running (no commit)."""
    pipeline.status = PipelineStatus.RUNNING


def advance(session: Session, pipeline_id: int) -> list[Stage]:
    """Enqueue every pending stage whose dependencies all succeeded or were skipped. Commits.

    Returns the stages this call enqueued (a concurrent call gets the others, never the same).
    """
    pipeline = lock_pipeline(session, pipeline_id)
    stages = stages_of(session, pipeline_id)
    by_kind = {s.kind: s for s in stages}
    enqueued: list[Stage] = []
    if pipeline.status != PipelineStatus.CANCELLED:
        for stage in stages:
            if stage.status != StageStatus.PENDING:
                continue
            if not all(by_kind[d].status in DONE_STATES for d in stage.depends_on):
                continue
            token = uuid.uuid4().hex
            res = session.execute(
                update(Stage)
                .where(Stage.id == stage.id, Stage.status == StageStatus.PENDING)
                .values(status=StageStatus.QUEUED, celery_task_id=token, queued_at=utcnow(),
                        updated_at=utcnow(), cancel_requested=False)
                .execution_options(synchronize_session=False)
            )
            if rowcount(res) == 1:
                session.refresh(stage)
                enqueued.append(stage)
    refresh_pipeline_status(session, pipeline, stages)
    session.commit()
    send_all(("stage", s.id, s.queue, s.celery_task_id or "") for s in enqueued)
    return enqueued


def advance_stage_pipeline(session: Session, stage_id: int) -> list[Stage]:
    """:func:`advance` the pipeline of ``stage_id`` (the task layer, after a stage's final state)."""
    pipeline_id = session.scalar(select(Stage.pipeline_id).where(Stage.id == stage_id))
    session.rollback()
    return advance(session, pipeline_id) if pipeline_id is not None else []


__all__ = ["OrchestrationError", "lock_pipeline", "stages_of", "refresh_pipeline_status", "refresh", "reopen",
           "advance", "advance_stage_pipeline"]
