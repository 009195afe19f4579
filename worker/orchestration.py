"""Pipeline actions over the database: submit, cancel, re-run, the optional stages, recovery.

The dashboard and the CLI call exactly these functions. The pipeline's own state (status,
advancing to the next stages) is :mod:`worker.pipeline_state`'s; messages go out through
:mod:`worker.dispatch` only *after* the commit, and a message carries a token (``celery_task_id``)
that the task must match to claim its stage, so duplicates and stale redeliveries are dropped.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
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
    aware,
    utcnow,
)
from db.session import rowcount
from worker import fanout
from worker.dispatch import Message, send_all, set_dispatcher
from worker.pipeline_state import (
    OrchestrationError,
    advance,
    lock_pipeline,
    refresh_pipeline_status,
    reopen,
    stages_of,
)
from worker.stage_graph import StageGraph
from worker.stages import GRAPH, dataset_fingerprint, input_hashes

log = logging.getLogger(__name__)


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
    graph: StageGraph = GRAPH,
) -> Pipeline:
    """Create a pipeline with the graph's required stages, mark reusable stages skipped, then advance.

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
    hashes = input_hashes(cfg, dataset_fingerprint(root), graph)

    pipeline = Pipeline(name=name, dataset_root=str(root), config=cfg, submitted_by=submitted_by,
                        status=PipelineStatus.PENDING)
    session.add(pipeline)
    session.flush()
    reused_kinds: set[str] = set()
    reused_pipelines: list[int] = []
    for position, spec in enumerate(graph.required):
        stage = Stage(
            pipeline_id=pipeline.id, kind=spec.kind, position=position, queue=str(spec.queue),
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
# cancel


def cancel_stage(session: Session, stage_id: int) -> Stage:
    """Pending/queued → cancelled (a queued message finds nothing to claim and is dropped);
    running → ``cancel_requested`` (the task stops at the next batch boundary, saves its checkpoint
    and marks the stage cancelled). Finished stages are left alone. Commits."""
    stage = session.get(Stage, stage_id)
    if stage is None:
        raise OrchestrationError(f"no stage {stage_id}")
    pipeline = lock_pipeline(session, stage.pipeline_id)
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
    pipeline = lock_pipeline(session, pipeline_id)
    now = utcnow()
    for stage in stages_of(session, pipeline_id):
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


def rerun_plan(session: Session, stage_id: int, graph: StageGraph = GRAPH) -> list[Stage]:
    """The stage and its downstream stages that a re-run would put back to pending (for the
    dashboard's confirmation), in pipeline order. Upstream stages are reused as they are."""
    stage = session.get(Stage, stage_id)
    if stage is None:
        raise OrchestrationError(f"no stage {stage_id}")
    kinds = set(graph.downstream_of(stage.kind))
    return [s for s in stages_of(session, stage.pipeline_id) if s.kind in kinds]


def rerun_stage(session: Session, stage_id: int, graph: StageGraph = GRAPH) -> list[Stage]:
    """Re-run a failed or cancelled stage: it and its downstream go back to pending (their epochs,
    artefacts and extraction items of the previous attempt are kept until overwritten), then
    advance. Refuses while any of them is queued or running. Commits; returns the reset stages."""
    stage = session.get(Stage, stage_id)
    if stage is None:
        raise OrchestrationError(f"no stage {stage_id}")
    pipeline = lock_pipeline(session, stage.pipeline_id)
    session.refresh(stage)
    if stage.status not in (StageStatus.FAILED, StageStatus.CANCELLED):
        raise OrchestrationError(f"stage {stage.kind} is {stage.status}; only failed or cancelled stages can be re-run")
    plan = rerun_plan(session, stage_id, graph)
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
        reopen(pipeline)
    session.commit()
    advance(session, pipeline.id)
    return [s for s in plan if s.status != StageStatus.SKIPPED]


def request_optional(session: Session, pipeline_id: int, kind: str, graph: StageGraph = GRAPH) -> Stage:
    """Add the optional stage ``kind`` to a pipeline whose dependencies of it are done (or re-queue
    it when it finished before) and enqueue it on its queue. Refuses while it is active. Commits."""
    spec = graph[kind]
    if not spec.optional:
        raise OrchestrationError(f"stage {kind} is part of every pipeline; re-run it instead")
    pipeline = lock_pipeline(session, pipeline_id)
    stages = stages_of(session, pipeline_id)
    by_kind = {s.kind: s for s in stages}
    waiting = [d for d in spec.depends_on if by_kind.get(d) is None or by_kind[d].status not in DONE_STATES]
    if waiting:
        raise OrchestrationError(f"pipeline {pipeline_id} has no finished {', '.join(waiting)} yet; "
                                 f"run {kind} when it succeeded")
    stage = by_kind.get(spec.kind)
    if stage is not None and stage.status in ACTIVE_STATES:
        raise OrchestrationError(f"the {kind} of pipeline {pipeline_id} is already {stage.status}")
    anchor = by_kind[spec.depends_on[0]] if spec.depends_on else stages[0]
    if stage is None:
        stage = Stage(pipeline_id=pipeline_id, kind=spec.kind, position=len(stages), queue=str(spec.queue),
                      depends_on=list(spec.depends_on), status=StageStatus.PENDING,
                      output_dir=str(Path(anchor.output_dir or ".").parent / spec.kind),
                      log_path=str(Path(anchor.log_path or "x").parent / f"{spec.kind}.log"))
        session.add(stage)
    else:
        stage.status = StageStatus.PENDING
        stage.error_summary = stage.traceback = stage.finished_at = stage.started_at = stage.celery_task_id = None
        stage.cancel_requested = False
        stage.attempts_base = stage.attempts
        stage.updated_at = utcnow()
    reopen(pipeline)
    session.commit()
    advance(session, pipeline_id)
    session.refresh(stage)
    return stage


def request_benchmark(session: Session, pipeline_id: int) -> Stage:
    """The dashboard's "Benchmark on STAViS sets": :func:`request_optional` for ``benchmark``."""
    return request_optional(session, pipeline_id, "benchmark")


# ---------------------------------------------------------------------------------------------
# crash recovery


def recover_stale(
    session: Session,
    *,
    own_host: str | None = None,
    stale_after_s: float = 120.0,
    lost_after_s: float = 60.0,
    message_exists: Callable[[str, str], bool] | None = None,
    graph: StageGraph = GRAPH,
) -> list[Stage]:
    """Re-enqueue work whose worker or message is gone. Commits; returns the stages re-enqueued.

    - running stages whose heartbeat (``updated_at``) is older than ``stale_after_s``, or that run
      on ``own_host`` (called at worker start: that host's previous life is dead) → queued with a
      new token (the old message, if Redis ever redelivers it, no longer matches and is dropped);
      their next claim counts an attempt, and after ``max_attempts`` the claim marks them failed;
    - queued stages/items older than ``lost_after_s`` whose message is not in the broker
      (``message_exists(queue, token)``; e.g. Redis restarted without persistence) → sent again;
    - running fan-out items likewise; a fan-out stage whose items are all final is finished.
    """
    now = utcnow()
    stale_before = now - timedelta(seconds=stale_after_s)
    lost_before = now - timedelta(seconds=lost_after_s)
    fan_kinds = graph.fan_out_kinds
    messages: list[Message] = []
    recovered: list[Stage] = []
    touched_pipelines: set[int] = set()

    def is_dead(host: str | None, updated: datetime | None) -> bool:
        return (own_host is not None and host == own_host) or (aware(updated) or now) < stale_before

    # running stages (a fan-out stage is alive while its items are)
    for stage in session.scalars(select(Stage).where(Stage.status == StageStatus.RUNNING,
                                                     Stage.kind.not_in(fan_kinds))):
        if is_dead(stage.worker_host, stage.updated_at):
            token = uuid.uuid4().hex
            res = session.execute(
                update(Stage).where(Stage.id == stage.id, Stage.status == StageStatus.RUNNING,
                                    Stage.celery_task_id == stage.celery_task_id)
                .values(status=StageStatus.QUEUED, celery_task_id=token, queued_at=now, updated_at=now,
                        error_summary=f"worker {stage.worker_host} lost; re-queued")
                .execution_options(synchronize_session=False)
            )
            if rowcount(res) == 1:
                messages.append(("stage", stage.id, stage.queue, token))
                recovered.append(stage)
                touched_pipelines.add(stage.pipeline_id)
    # running fan-out items (an item goes to its stage's queue)
    items = select(ExtractionItem, Stage.queue).join(Stage, Stage.id == ExtractionItem.stage_id)
    for item, queue in session.execute(items.where(ExtractionItem.status == ItemStatus.RUNNING)).all():
        if is_dead(item.worker_host, item.updated_at):
            token = uuid.uuid4().hex
            res = session.execute(
                update(ExtractionItem).where(ExtractionItem.id == item.id, ExtractionItem.status == ItemStatus.RUNNING)
                .values(status=ItemStatus.QUEUED, celery_task_id=token, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if rowcount(res) == 1:
                messages.append(("item", item.id, queue, token))
    # queued messages that vanished
    if message_exists is not None:
        for stage in session.scalars(select(Stage).where(Stage.status == StageStatus.QUEUED)):
            if (aware(stage.queued_at) or now) < lost_before and stage.celery_task_id and not message_exists(
                stage.queue, stage.celery_task_id
            ):
                messages.append(("stage", stage.id, stage.queue, stage.celery_task_id))
                session.execute(update(Stage).where(Stage.id == stage.id).values(queued_at=now)
                                .execution_options(synchronize_session=False))
                recovered.append(stage)
        for item, queue in session.execute(items.where(ExtractionItem.status == ItemStatus.QUEUED)).all():
            if aware(item.updated_at) < lost_before and item.celery_task_id and not message_exists(
                queue, item.celery_task_id
            ):
                messages.append(("item", item.id, queue, item.celery_task_id))
                session.execute(update(ExtractionItem).where(ExtractionItem.id == item.id).values(updated_at=now)
                                .execution_options(synchronize_session=False))
    # running fan-out stages: items never created (fan-out task died) or all items final
    with_items: list[tuple[int, str]] = []
    for stage in session.scalars(select(Stage).where(Stage.status == StageStatus.RUNNING, Stage.kind.in_(fan_kinds))):
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
            with_items.append((stage.id, stage.kind))
    session.commit()
    send_all(messages)
    # only stages whose fan-out inserted its items: one without items yet is still being set up
    # ("all items final" would be vacuously true and fail it with 0/0 videos)
    finished: set[int] = set()
    for stage_id, kind in with_items:
        if fanout.finish_if_done(session, stage_id, graph[kind]) is not None:
            pid = session.scalar(select(Stage.pipeline_id).where(Stage.id == stage_id))
            if pid is not None:
                finished.add(pid)
    for pid in finished:
        advance(session, pid)
    for pid in touched_pipelines - finished:
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
    "request_optional",
    "request_benchmark",
    "recover_stale",
    "refresh_pipeline_status",
    "set_dispatcher",
]
