"""Celery tasks: run a stage or one fan-out item, then advance the pipeline.

The stage kinds and their bodies are declared in worker.stages (the registry); a stage's own state
(claim, heartbeat, epochs, progress, cancel, artefacts, errors) is worker.stage_runner's, a
fan-out's items worker.fanout's, the pipeline's worker.pipeline_state's. This layer is the only one
that connects them: it looks the kind up, runs it, and advances the pipeline after a final state.
Nothing here imports torch: the Celery parent process must never initialise CUDA before it forks
its pool children (bodies import ``sta_models`` inside).
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from celery import signals
from sqlalchemy import select

import worker.cpu_threads  # noqa: F401  (the pool children share the CPU threads)
import worker.handback  # noqa: F401  (registers the fast-stop signals)
import worker.maintenance  # noqa: F401  (registers the recovery signals)
import worker.presence  # noqa: F401  (each worker keeps its row in the workers table)
from db.models import ItemStatus, Stage
from db.session import dispose_engines, session_scope
from db.transient import DatabaseUnavailable, retry
from sta_models.filehash import sha256_file
from stapipe_settings import get_settings
from worker import fanout, pipeline_state
from worker.celery_app import TASK_ITEM, TASK_STAGE, app
from worker.devices import check_stage_devices
from worker.faults import maybe_inject
from worker.logs import append_line
from worker.stage_context import StageContext
from worker.stage_graph import GraphError, Queue, StageGraph, StageSpec
from worker.stage_runner import FINAL_OUTCOMES, execute_stage, one_line, relative_paths
from worker.stages import GRAPH

log = logging.getLogger(__name__)


def _host(task: Any) -> str:
    return str(getattr(task.request, "hostname", None) or socket.gethostname())


@signals.worker_process_init.connect
def _fresh_child(**_: Any) -> None:
    """Pool children must not share the parent's pooled DB connections."""
    dispose_engines()


def _before(ctx: StageContext) -> None:
    """Before the library is called: the test-only fault hook (STAPIPE_FAULTS, see worker.faults),
    then the stage's device names against this worker's GPUs."""
    def read() -> int:
        with session_scope(ctx.url) as s:
            return s.scalar(select(Stage.attempts).where(Stage.id == ctx.stage_id)) or 0

    attempts = retry(read, "reading the attempt count", ctx.outage_s)
    check_stage_devices(ctx.kind, ctx.config, ctx.host)
    maybe_inject(ctx.kind, attempts, ctx.callbacks)


# ---------------------------------------------------------------------------------------------
# running and advancing (callable without Celery: tests run recorded messages through these)


def _unknown_kind(kind: str) -> StageSpec:
    """A stage whose kind this worker does not know (a newer or older release): it fails with one line."""
    def body(ctx: StageContext) -> None:
        raise GraphError(f"no stage kind {kind!r} in this worker's stage graph")

    return StageSpec(kind=kind, queue=Queue.CPU, body=body)


def run_stage_message(url: str, stage_id: int, token: str, host: str, max_attempts: int, *,
                      graph: StageGraph = GRAPH, outage_s: float = 90.0) -> str:
    """Run stage ``stage_id`` under the claim ``token`` and advance its pipeline after a final state.

    Raises :class:`DatabaseUnavailable` when the stage could not even be read or claimed.
    """
    def read_kind() -> str | None:
        with session_scope(url) as s:
            return s.scalar(select(Stage.kind).where(Stage.id == stage_id))

    kind = retry(read_kind, f"reading stage {stage_id}", outage_s)
    if kind is None:
        return "dropped"
    spec = graph.get(kind) or _unknown_kind(kind)
    outcome = execute_stage(url, stage_id, token, host, max_attempts, spec, before=_before, outage_s=outage_s)
    if outcome in FINAL_OUTCOMES:
        _advance(url, stage_id, outage_s)
    return outcome


def _advance(url: str, stage_id: int, outage_s: float) -> None:
    def advance() -> None:
        with session_scope(url) as session:
            pipeline_state.advance_stage_pipeline(session, stage_id)

    retry(advance, "advancing the pipeline", outage_s)


def run_item_message(url: str, item_id: int, token: str, host: str, *, graph: StageGraph = GRAPH) -> str:
    """Run one fan-out item (its stage's ``fan_out.run``); the item that may be the stage's last
    finishes the stage and advances the pipeline.

    Two short transactions per item (see docs/decisions.md, "Extraction items"): the claim
    (conditional UPDATE … RETURNING + one SELECT of the stage) and the result (item row, artefact
    upsert and the stage's progress counters); the stage-level "all done?" check with COUNT(*)
    runs only when the counters say this was the last item.
    """
    with session_scope(url) as s:
        job = fanout.claim_item(s, item_id, token, host)
    if job is None:
        return "dropped"
    spec = graph[job.kind]
    assert spec.fan_out is not None, f"stage {job.kind} has items but does not fan out"
    out = spec.fan_out.output(job)
    t0 = time.perf_counter()
    status, reason, artefact = ItemStatus.SUCCEEDED, None, None
    if job.skip:
        status, reason = ItemStatus.FAILED, "cancelled"
    else:
        try:
            maybe_inject(f"{job.kind}:{job.key}", 1, None)
            spec.fan_out.run(job)
        except Exception as exc:  # every failure is a per-item reason; the stage decides later
            status, reason = ItemStatus.FAILED, (relative_paths(str(exc)).strip().splitlines() or [one_line(exc)])[0][:500]
    seconds = time.perf_counter() - t0
    if status == ItemStatus.SUCCEEDED and not job.skip:
        try:  # hashed here, outside the result transaction (no lock held while reading the file)
            artefact = (out, out.stat().st_size, sha256_file(out))
        except OSError as exc:
            status, reason = ItemStatus.FAILED, one_line(exc)
    with session_scope(url) as s:
        recorded, maybe_last = fanout.finish_item(s, job, spec, status, reason, seconds, artefact)
    if job.log_path:
        line = f"{job.key}: {'ok' if reason is None else 'FAILED ' + reason} ({seconds:.1f} s)"
        append_line(job.log_path, line if recorded else f"{line}; superseded by a newer attempt, not recorded")
    if maybe_last:
        with session_scope(url) as s:
            if fanout.finish_if_done(s, job.stage_id, spec) is not None:
                pipeline_state.advance_stage_pipeline(s, job.stage_id)
    return str(status) if recorded else "superseded"


# ---------------------------------------------------------------------------------------------
# Celery tasks


@app.task(name=TASK_STAGE, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_stage(self: Any, stage_id: int) -> str:
    """Run one stage; the message's task id is the stage's claim token."""
    settings = get_settings()
    try:
        return run_stage_message(settings.db_url, stage_id, self.request.id, _host(self), settings.max_attempts,
                                 outage_s=settings.db_outage_s)
    except DatabaseUnavailable as exc:  # not claimed yet: the same message (same token) comes back later
        log.warning("stage %s: %s; message re-sent", stage_id, exc)
        raise self.retry(countdown=settings.recovery_interval_s, max_retries=None) from exc


@app.task(name=TASK_ITEM, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def extract_item(self: Any, item_id: int) -> str:
    """Run one item of a fan-out stage (today: extract one video)."""
    return run_item_message(get_settings().db_url, item_id, self.request.id, _host(self))


__all__ = ["run_stage", "extract_item", "run_stage_message", "run_item_message"]
