"""SQLAlchemy 2 models: the pipeline state lives here, not in Celery.

Celery messages only say "run stage N" / "extract item N"; everything the dashboard shows (stage
states, attempts, progress, epochs, artefacts, errors) is a row in these tables, so a broker or
dashboard restart loses nothing.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Timezone-aware UTC now (stored as UTC everywhere; SQLite drops the tz, PostgreSQL keeps it)."""
    return datetime.now(UTC)


@overload
def aware(dt: datetime) -> datetime:
    ...


@overload
def aware(dt: None) -> None:
    ...


def aware(dt: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes (stored as UTC); make them comparable with :func:`utcnow`."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


class PipelineStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StageStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its dependencies
    QUEUED = "queued"  # a Celery message was sent
    RUNNING = "running"  # claimed by a worker (attempts incremented)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REUSED = "reused"  # outputs of an identical earlier stage (see ``reused_from_id``)
    SKIPPED = "reused"  # the old name of REUSED (an alias; the stored word is "reused" everywhere)


class ItemStatus(enum.StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


#: stage states that count as "done" for dependants
DONE_STATES = (StageStatus.SUCCEEDED, StageStatus.SKIPPED)
#: states a stage can no longer leave without a re-run
FINAL_STATES = (StageStatus.SUCCEEDED, StageStatus.SKIPPED, StageStatus.FAILED, StageStatus.CANCELLED)
#: states in which a stage's pipeline is still working
ACTIVE_STATES = (StageStatus.QUEUED, StageStatus.RUNNING)

# Deterministic constraint names so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, datetime: DateTime(timezone=True)}


class Pipeline(Base):
    """One submitted run of the whole method on one dataset with one config."""

    __tablename__ = "pipelines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    dataset_root: Mapped[str] = mapped_column(String(1000))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # PipelineConfig.model_dump(mode="json")
    status: Mapped[str] = mapped_column(String(16), default=PipelineStatus.PENDING, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    submitted_by: Mapped[str] = mapped_column(String(200), default="")
    # set when at least one stage reuses an earlier pipeline's outputs (the latest such pipeline)
    reused_from_id: Mapped[int | None] = mapped_column(
        ForeignKey("pipelines.id", ondelete="SET NULL"), default=None
    )
    error_summary: Mapped[str | None] = mapped_column(String(500), default=None)

    stages: Mapped[list[Stage]] = relationship(
        back_populates="pipeline", order_by="Stage.position", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"<Pipeline {self.id} {self.name!r} {self.status}>"


class Stage(Base):
    """One step of a pipeline (see the stage table in docs/architecture.md)."""

    __tablename__ = "stages"
    __table_args__ = (
        UniqueConstraint("pipeline_id", "kind"),
        Index("ix_stages_status_updated_at", "status", "updated_at"),  # recover_stale / re-enqueue scans
        Index("ix_stages_input_hash", "input_hash", "status"),  # reuse look-up on submit
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer, default=0)  # topological order for display
    status: Mapped[str] = mapped_column(String(16), default=StageStatus.PENDING)
    queue: Mapped[str] = mapped_column(String(16))  # "cpu" | "gpu"
    depends_on: Mapped[list[str]] = mapped_column(JSON, default=list)  # kinds in the same pipeline
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims, over the stage's whole life
    attempts_base: Mapped[int] = mapped_column(Integer, default=0)  # attempts at the last re-run (cap base)
    worker_host: Mapped[str | None] = mapped_column(String(200), default=None)
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)  # heartbeat while running
    error_summary: Mapped[str | None] = mapped_column(String(500), default=None)  # one line
    traceback: Mapped[str | None] = mapped_column(Text, default=None)
    log_path: Mapped[str | None] = mapped_column(String(1000), default=None)
    output_dir: Mapped[str | None] = mapped_column(String(1000), default=None)  # source's dir when reused
    input_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    celery_task_id: Mapped[str | None] = mapped_column(String(64), default=None)  # current delivery token
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_failed: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    progress_what: Mapped[str | None] = mapped_column(String(200), default=None)
    reused_from_id: Mapped[int | None] = mapped_column(ForeignKey("stages.id", ondelete="SET NULL"), default=None)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)  # e.g. final metrics

    pipeline: Mapped[Pipeline] = relationship(back_populates="stages")
    epochs: Mapped[list[EpochMetric]] = relationship(
        back_populates="stage", order_by="EpochMetric.epoch", cascade="all, delete-orphan", passive_deletes=True
    )
    artefacts: Mapped[list[Artefact]] = relationship(
        back_populates="stage", order_by="Artefact.path", cascade="all, delete-orphan", passive_deletes=True
    )
    items: Mapped[list[ExtractionItem]] = relationship(
        back_populates="stage", order_by="ExtractionItem.video_id", cascade="all, delete-orphan",
        passive_deletes=True,
    )

    @property
    def reused(self) -> bool:
        return self.reused_from_id is not None

    def __repr__(self) -> str:
        return f"<Stage {self.id} {self.kind} {self.status}>"


class ExtractionItem(Base):
    """One video of the extract stage's fan-out (one Celery task each)."""

    __tablename__ = "extraction_items"
    __table_args__ = (
        UniqueConstraint("stage_id", "video_id"),
        Index("ix_extraction_items_stage_id_status", "stage_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"))
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"), index=True)
    video_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=ItemStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(String(500), default=None)  # why it failed (one line)
    seconds: Mapped[float | None] = mapped_column(Float, default=None)  # wall time of the extraction
    output_path: Mapped[str | None] = mapped_column(String(1000), default=None)
    worker_host: Mapped[str | None] = mapped_column(String(200), default=None)
    celery_task_id: Mapped[str | None] = mapped_column(String(64), default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    stage: Mapped[Stage] = relationship(back_populates="items")


class EpochMetric(Base):
    """One finished epoch of a training stage; unique per (stage, epoch) so a resumed stage or a
    redelivered task records each epoch exactly once. The unique index serves "since epoch N"."""

    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("stage_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)  # 1-based
    train_loss: Mapped[float | None] = mapped_column(Float, default=None)
    val_loss: Mapped[float | None] = mapped_column(Float, default=None)
    val_accuracy: Mapped[float | None] = mapped_column(Float, default=None)
    lr: Mapped[float | None] = mapped_column(Float, default=None)
    seconds: Mapped[float | None] = mapped_column(Float, default=None)
    samples_per_s: Mapped[float | None] = mapped_column(Float, default=None)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    stage: Mapped[Stage] = relationship(back_populates="epochs")


class Artefact(Base):
    """A file a stage produced (checkpoint, HDF5, preview PNG, overlay MP4, metrics JSON/CSV)."""

    __tablename__ = "artefacts"
    __table_args__ = (
        UniqueConstraint("stage_id", "path"),
        Index("ix_artefacts_stage_id_kind", "stage_id", "kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # checkpoint|features|cams|crops|pseudo_gt|preview|prediction|video|metrics|report|log
    path: Mapped[str] = mapped_column(String(1000))  # absolute
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    stage: Mapped[Stage] = relationship(back_populates="artefacts")


class Worker(Base):
    """A worker process that is (or was recently) online; each worker writes its own row at start
    and every ``worker.registry.HEARTBEAT_S``, and deletes it on a clean shutdown. The stage it
    runs is not stored here: it is the running stage whose ``worker_host`` is this name."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)  # Celery hostname, e.g. gpu0@host
    host: Mapped[str] = mapped_column(String(200))
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    device: Mapped[str] = mapped_column(String(200), default="cpu")
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    concurrency: Mapped[int | None] = mapped_column(Integer, default=None)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_heartbeat: Mapped[datetime] = mapped_column(default=utcnow, index=True)


# --- authentication state shared by every dashboard process (issue #14) ----------------------


class AuthSession(Base):
    """A logged-in browser session: the cookie carries ``sid``; logout deletes the row, and a
    changed password/token makes every row with the old ``fingerprint`` invalid."""

    __tablename__ = "auth_sessions"

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(32))  # of the token it logged in with
    client: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class AuthFailure(Base):
    """One failed login or bearer token, by client address (the throttle counts recent rows)."""

    __tablename__ = "auth_failures"
    __table_args__ = (Index("ix_auth_failures_client_at", "client", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


__all__ = [
    "AuthFailure",
    "AuthSession",
    "Base",
    "Worker",
    "Pipeline",
    "Stage",
    "ExtractionItem",
    "EpochMetric",
    "Artefact",
    "PipelineStatus",
    "StageStatus",
    "ItemStatus",
    "DONE_STATES",
    "FINAL_STATES",
    "ACTIVE_STATES",
    "utcnow",
]
