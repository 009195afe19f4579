"""Pipeline state machine over the database: submit, advance, cancel, re-run, recover.

The dashboard and the CLI call exactly these functions. Every transition is a conditional UPDATE
(``… WHERE status = 'pending'``) so two workers advancing the same pipeline at once never enqueue a
stage twice; Celery messages are sent only *after* the commit, and a message carries a token
(``celery_task_id``) that the task must match to claim its stage, so duplicates and stale
redeliveries are dropped.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import (
    ACTIVE_STATES,
    DONE_STATES,
    Artefact,
    ExtractionItem,
    ItemStatus,
    Pipeline,
    PipelineStatus,
    Stage,
    StageStatus,
    utcnow,
)
from worker.stages import OPTIONAL_STAGES, SPECS, STAGES, dataset_fingerprint, downstream_of, input_hashes

log = logging.getLogger(__name__)

#: (what, id, queue, token) — ``what`` is "stage" or "item"
Dispatcher = Callable[[str, int, str, str], None]


class OrchestrationError(ValueError):
    """An action that the current state does not allow (the API turns it into a 409/400)."""


def _celery_dispatch(what: str, obj_id: int, queue: str, token: str) -> None:
    from worker.celery_app import send

    send(what, obj_id, queue, token)


_dispatcher: Dispatcher = _celery_dispatch


def set_dispatcher(dispatcher: Dispatcher | None) -> Dispatcher:
    """Replace how messages are sent (tests record them); ``None`` restores Celery. Returns the old one."""
    global _dispatcher
    old = _dispatcher
    _dispatcher = dispatcher or _celery_dispatch
    return old


def _send_all(messages: Iterable[tuple[str, int, str, str]]) -> None:
    for msg in messages:
        try:
            _dispatcher(*msg)
        except Exception:  # broker down: the row stays queued and requeue_lost() sends it again
            log.exception("could not send %s %s to queue %s", msg[0], msg[1], msg[2])


def _aware(dt: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes (stored as UTC); make them comparable with utcnow()."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=utcnow().tzinfo)
    return dt


# ---------------------------------------------------------------------------------------------
# submit


def _config_dict(config: Any) -> dict[str, Any]:
    from sta_models.config import PipelineConfig

    if isinstance(config, PipelineConfig):
        return config.model_dump(mode="json")
    return PipelineConfig.model_validate(config).model_dump(mode="json")


def _artefacts_intact(session: Session, stage: Stage) -> bool:
    """A stage's outputs can be reused only if its files are still there with their sizes."""
    if not stage.output_dir or not Path(stage.output_dir).is_dir():
        return False
    for art in session.scalars(select(Artefact).where(Artefact.stage_id == stage.id)):
        p = Path(art.path)
        if not p.is_file() or p.stat().st_size != art.size:
            return False
    return True


def _reuse_source(session: Session, input_hash: str, exclude_pipeline: int) -> Stage | None:
    """The newest succeeded stage with the same input hash whose outputs still exist."""
    candidates = session.scalars(
        select(Stage)
        .where(
            Stage.input_hash == input_hash,
            Stage.status == StageStatus.SUCCEEDED,
            Stage.pipeline_id != exclude_pipeline,
        )
        .order_by(Stage.finished_at.desc(), Stage.id.desc())
        .limit(5)
    )
    for cand in candidates:
        if _artefacts_intact(session, cand):
            return cand
    return None


def submit_pipeline(
    session: Session,
    *,
    name: str,
    dataset_root: str | Path,
    config: Any,
    submitted_by: str = "",
    artefact_root: str | Path | None = None,
    log_root: str | Path | None = None,
    reuse: bool = True,
) -> Pipeline:
    """Create a pipeline with its 13 stages, mark reusable stages skipped, then advance.

    ``config`` is a ``PipelineConfig`` or a dict validated as one. A stage is reused when an
    earlier succeeded stage had the same input hash (its config sections + everything upstream)
    and all its own upstream stages are reused too; it becomes ``skipped`` with ``reused_from_id``.
    Commits. Raises ``pydantic.ValidationError`` for a bad config.
    """
    from stapipe_settings import get_settings

    settings = get_settings()
    cfg = _config_dict(config)
    artefact_root = Path(artefact_root) if artefact_root else settings.artefact_dir
    log_root = Path(log_root) if log_root else settings.log_dir
    root = Path(dataset_root).expanduser().resolve()
    hashes = input_hashes(cfg, dataset_fingerprint(root))

    pipeline = Pipeline(name=name, dataset_root=str(root), config=cfg, submitted_by=submitted_by,
                        status=PipelineStatus.PENDING)
    session.add(pipeline)
    session.flush()
    reused_kinds: set[str] = set()
    reused_pipelines: list[int] = []
    for position, spec in enumerate(STAGES):
        stage = Stage(
            pipeline_id=pipeline.id, kind=spec.kind, position=position, queue=spec.queue,
            depends_on=list(spec.depends_on), input_hash=hashes[spec.kind], status=StageStatus.PENDING,
            output_dir=str(artefact_root / str(pipeline.id) / spec.kind),
            log_path=str(log_root / str(pipeline.id) / f"{spec.kind}.log"),
        )
        source = None
        if reuse and all(d in reused_kinds for d in spec.depends_on):
            source = _reuse_source(session, hashes[spec.kind], pipeline.id)
        if source is not None:
            stage.status = StageStatus.SKIPPED
            stage.reused_from_id = source.reused_from_id or source.id
            stage.output_dir = source.output_dir
            stage.summary = source.summary
            stage.progress_done, stage.progress_failed, stage.progress_total, stage.progress_what = (
                source.progress_done, source.progress_failed, source.progress_total, source.progress_what)
            stage.finished_at = utcnow()
            reused_kinds.add(spec.kind)
            reused_pipelines.append(source.pipeline_id)
        session.add(stage)
    if reused_pipelines:
        pipeline.reused_from_id = max(reused_pipelines)
    session.commit()
    advance(session, pipeline.id)
    session.refresh(pipeline)
    return pipeline


# ---------------------------------------------------------------------------------------------
# advance / status


def _lock_pipeline(session: Session, pipeline_id: int) -> Pipeline:
    """Row lock on PostgreSQL (serialises concurrent advances); SQLite serialises writers anyway."""
    pipeline = session.scalars(
        select(Pipeline).where(Pipeline.id == pipeline_id).with_for_update().execution_options(populate_existing=True)
    ).one_or_none()
    if pipeline is None:
        raise OrchestrationError(f"no pipeline {pipeline_id}")
    return pipeline


def _stages(session: Session, pipeline_id: int) -> list[Stage]:
    return list(
        session.scalars(
            select(Stage).where(Stage.pipeline_id == pipeline_id).order_by(Stage.position)
            .execution_options(populate_existing=True)
        )
    )


def refresh_pipeline_status(session: Session, pipeline: Pipeline, stages: list[Stage] | None = None) -> str:
    """Derive the pipeline's status from its stages (no commit)."""
    stages = stages if stages is not None else _stages(session, pipeline.id)
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


def advance(session: Session, pipeline_id: int) -> list[Stage]:
    """Enqueue every pending stage whose dependencies all succeeded or were skipped. Commits.

    Returns the stages this call enqueued (a concurrent call gets the others, never the same).
    """
    pipeline = _lock_pipeline(session, pipeline_id)
    stages = _stages(session, pipeline_id)
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
            if res.rowcount == 1:
                session.refresh(stage)
                enqueued.append(stage)
    refresh_pipeline_status(session, pipeline, stages)
    session.commit()
    _send_all(("stage", s.id, s.queue, s.celery_task_id or "") for s in enqueued)
    return enqueued


# ---------------------------------------------------------------------------------------------
# cancel


def cancel_stage(session: Session, stage_id: int) -> Stage:
    """Pending/queued → cancelled (a queued message finds nothing to claim and is dropped);
    running → ``cancel_requested`` (the task stops at the next batch boundary, saves its checkpoint
    and marks the stage cancelled). Finished stages are left alone. Commits."""
    stage = session.get(Stage, stage_id)
    if stage is None:
        raise OrchestrationError(f"no stage {stage_id}")
    pipeline = _lock_pipeline(session, stage.pipeline_id)
    session.refresh(stage)
    now = utcnow()
    if stage.status in (StageStatus.PENDING, StageStatus.QUEUED):
        session.execute(
            update(Stage).where(Stage.id == stage.id, Stage.status.in_([StageStatus.PENDING, StageStatus.QUEUED]))
            .values(status=StageStatus.CANCELLED, finished_at=now, updated_at=now, error_summary="cancelled")
            .execution_options(synchronize_session=False)
        )
    elif stage.status == StageStatus.RUNNING:
        stage.cancel_requested = True
    session.flush()
    session.refresh(stage)
    refresh_pipeline_status(session, pipeline)
    session.commit()
    return stage


def cancel_pipeline(session: Session, pipeline_id: int) -> Pipeline:
    """Cancel every stage that has not finished (see :func:`cancel_stage`). Commits."""
    pipeline = _lock_pipeline(session, pipeline_id)
    now = utcnow()
    for stage in _stages(session, pipeline_id):
        if stage.status in (StageStatus.PENDING, StageStatus.QUEUED):
            stage.status = StageStatus.CANCELLED
            stage.finished_at = now
            stage.error_summary = "cancelled"
        elif stage.status == StageStatus.RUNNING:
            stage.cancel_requested = True
    session.flush()
    refresh_pipeline_status(session, pipeline)
    if pipeline.status == PipelineStatus.RUNNING:  # stays running until the running stages stop
        pass
    session.commit()
    return pipeline


# ---------------------------------------------------------------------------------------------
# re-run


def rerun_plan(session: Session, stage_id: int) -> list[Stage]:
    """The stage and its downstream stages that a re-run would put back to pending (for the
    dashboard's confirmation), in pipeline order. Upstream stages are reused as they are."""
    stage = session.get(Stage, stage_id)
    if stage is None:
        raise OrchestrationError(f"no stage {stage_id}")
    kinds = set(downstream_of(stage.kind))
    return [s for s in _stages(session, stage.pipeline_id) if s.kind in kinds]


def rerun_stage(session: Session, stage_id: int) -> list[Stage]:
    """Re-run a failed or cancelled stage: it and its downstream go back to pending (their epochs,
    artefacts and extraction items of the previous attempt are kept until overwritten), then
    advance. Refuses while any of them is queued or running. Commits; returns the reset stages."""
    stage = session.get(Stage, stage_id)
    if stage is None:
        raise OrchestrationError(f"no stage {stage_id}")
    pipeline = _lock_pipeline(session, stage.pipeline_id)
    session.refresh(stage)
    if stage.status not in (StageStatus.FAILED, StageStatus.CANCELLED):
        raise OrchestrationError(f"stage {stage.kind} is {stage.status}; only failed or cancelled stages can be re-run")
    plan = rerun_plan(session, stage_id)
    busy = [s.kind for s in plan if s.status in ACTIVE_STATES]
    if busy:
        raise OrchestrationError(f"stages still active: {', '.join(busy)}")
    for s in plan:
        if s.status == StageStatus.SKIPPED:
            continue  # a reused downstream stage stays reused: its inputs did not change
        s.status = StageStatus.PENDING
        s.error_summary = None
        s.traceback = None
        s.cancel_requested = False
        s.finished_at = None
        s.started_at = None
        s.celery_task_id = None
        s.attempts_base = s.attempts
        s.updated_at = utcnow()
    if pipeline.status in (PipelineStatus.FAILED, PipelineStatus.CANCELLED, PipelineStatus.SUCCEEDED):
        pipeline.status = PipelineStatus.RUNNING
    session.commit()
    advance(session, pipeline.id)
    return [s for s in plan if s.status != StageStatus.SKIPPED]


def request_benchmark(session: Session, pipeline_id: int) -> Stage:
    """Add the optional ``benchmark`` stage to a pipeline whose STA is trained (or re-queue it when
    it finished before) and enqueue it on the gpu queue. Refuses while it is active. Commits."""
    spec = OPTIONAL_STAGES[0]
    pipeline = _lock_pipeline(session, pipeline_id)
    stages = _stages(session, pipeline_id)
    by_kind = {s.kind: s for s in stages}
    if any(by_kind.get(d) is None or by_kind[d].status not in DONE_STATES for d in spec.depends_on):
        raise OrchestrationError(f"pipeline {pipeline_id} has no trained STA yet; benchmark it when train_sta succeeded")
    stage = by_kind.get(spec.kind)
    if stage is not None and stage.status in ACTIVE_STATES:
        raise OrchestrationError(f"the benchmark of pipeline {pipeline_id} is already {stage.status}")
    base = Path(by_kind["train_sta"].output_dir or ".").parent
    if stage is None:
        stage = Stage(pipeline_id=pipeline_id, kind=spec.kind, position=len(stages), queue=spec.queue,
                      depends_on=list(spec.depends_on), status=StageStatus.PENDING,
                      output_dir=str(base / spec.kind),
                      log_path=str(Path(by_kind["train_sta"].log_path or "x").parent / f"{spec.kind}.log"))
        session.add(stage)
    else:
        stage.status = StageStatus.PENDING
        stage.error_summary = stage.traceback = stage.finished_at = stage.started_at = stage.celery_task_id = None
        stage.cancel_requested = False
        stage.attempts_base = stage.attempts
        stage.updated_at = utcnow()
    pipeline.status = PipelineStatus.RUNNING
    session.commit()
    advance(session, pipeline_id)
    session.refresh(stage)
    return stage


# ---------------------------------------------------------------------------------------------
# crash recovery


def recover_stale(
    session: Session,
    *,
    own_host: str | None = None,
    stale_after_s: float = 120.0,
    lost_after_s: float = 60.0,
    message_exists: Callable[[str, str], bool] | None = None,
) -> list[Stage]:
    """Re-enqueue work whose worker or message is gone. Commits; returns the stages re-enqueued.

    - running stages whose heartbeat (``updated_at``) is older than ``stale_after_s``, or that run
      on ``own_host`` (called at worker start: that host's previous life is dead) → queued with a
      new token (the old message, if Redis ever redelivers it, no longer matches and is dropped);
      their next claim counts an attempt, and after ``max_attempts`` the claim marks them failed;
    - queued stages/items older than ``lost_after_s`` whose message is not in the broker
      (``message_exists(queue, token)``; e.g. Redis restarted without persistence) → sent again;
    - running extraction items likewise; an extract stage whose items are all final is finished.
    """
    now = utcnow()
    stale_before = now - timedelta(seconds=stale_after_s)
    lost_before = now - timedelta(seconds=lost_after_s)
    messages: list[tuple[str, int, str, str]] = []
    recovered: list[Stage] = []
    touched_pipelines: set[int] = set()

    def is_dead(host: str | None, updated: datetime | None) -> bool:
        return (own_host is not None and host == own_host) or (_aware(updated) or now) < stale_before

    # running stages (the extract stage is alive while its items are)
    for stage in session.scalars(select(Stage).where(Stage.status == StageStatus.RUNNING)):
        if stage.kind == "extract":
            continue
        if is_dead(stage.worker_host, stage.updated_at):
            token = uuid.uuid4().hex
            res = session.execute(
                update(Stage).where(Stage.id == stage.id, Stage.status == StageStatus.RUNNING,
                                    Stage.celery_task_id == stage.celery_task_id)
                .values(status=StageStatus.QUEUED, celery_task_id=token, queued_at=now, updated_at=now,
                        error_summary=f"worker {stage.worker_host} lost; re-queued")
                .execution_options(synchronize_session=False)
            )
            if res.rowcount == 1:
                messages.append(("stage", stage.id, stage.queue, token))
                recovered.append(stage)
                touched_pipelines.add(stage.pipeline_id)
    # running extraction items
    for item in session.scalars(select(ExtractionItem).where(ExtractionItem.status == ItemStatus.RUNNING)):
        if is_dead(item.worker_host, item.updated_at):
            token = uuid.uuid4().hex
            res = session.execute(
                update(ExtractionItem).where(ExtractionItem.id == item.id, ExtractionItem.status == ItemStatus.RUNNING)
                .values(status=ItemStatus.QUEUED, celery_task_id=token, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if res.rowcount == 1:
                messages.append(("item", item.id, "cpu", token))
    # queued messages that vanished
    if message_exists is not None:
        for stage in session.scalars(select(Stage).where(Stage.status == StageStatus.QUEUED)):
            if (_aware(stage.queued_at) or now) < lost_before and stage.celery_task_id and not message_exists(
                stage.queue, stage.celery_task_id
            ):
                messages.append(("stage", stage.id, stage.queue, stage.celery_task_id))
                session.execute(update(Stage).where(Stage.id == stage.id).values(queued_at=now)
                                .execution_options(synchronize_session=False))
                recovered.append(stage)
        for item in session.scalars(select(ExtractionItem).where(ExtractionItem.status == ItemStatus.QUEUED)):
            if (_aware(item.updated_at) or now) < lost_before and item.celery_task_id and not message_exists(
                "cpu", item.celery_task_id
            ):
                messages.append(("item", item.id, "cpu", item.celery_task_id))
                session.execute(update(ExtractionItem).where(ExtractionItem.id == item.id).values(updated_at=now)
                                .execution_options(synchronize_session=False))
    # running extract stages: items never created (fan-out task died) or all items final
    with_items: list[int] = []
    for stage in session.scalars(select(Stage).where(Stage.status == StageStatus.RUNNING, Stage.kind == "extract")):
        n_items = session.scalar(select(func.count()).where(ExtractionItem.stage_id == stage.id)) or 0
        if n_items == 0 and is_dead(stage.worker_host, stage.updated_at):
            token = uuid.uuid4().hex
            session.execute(update(Stage).where(Stage.id == stage.id, Stage.status == StageStatus.RUNNING)
                            .values(status=StageStatus.QUEUED, celery_task_id=token, queued_at=now, updated_at=now)
                            .execution_options(synchronize_session=False))
            messages.append(("stage", stage.id, stage.queue, token))
            recovered.append(stage)
        elif n_items:
            touched_pipelines.add(stage.pipeline_id)
            with_items.append(stage.id)
    session.commit()
    _send_all(messages)
    from worker.stage_runner import finish_extract_if_done  # avoid an import cycle

    # only stages whose fan-out inserted its items: one without items yet is still being set up
    # ("all items final" would be vacuously true and fail it with 0/0 videos)
    for stage_id in with_items:
        finish_extract_if_done(session, stage_id)
    for pid in touched_pipelines:
        pipeline = session.get(Pipeline, pid)
        if pipeline is not None:
            refresh_pipeline_status(session, pipeline)
    session.commit()
    return recovered


__all__ = [
    "OrchestrationError",
    "submit_pipeline",
    "advance",
    "cancel_pipeline",
    "cancel_stage",
    "rerun_plan",
    "rerun_stage",
    "recover_stale",
    "refresh_pipeline_status",
    "set_dispatcher",
    "SPECS",
]
