"""Running one stage inside a Celery task: claim, heartbeat, callbacks → DB, finish/fail/cancel.

The stage bodies (worker.stages) only call the library; everything about a stage's own state lives
here. :func:`execute_stage` returns the outcome; the task layer (worker.tasks) advances the pipeline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import traceback as tb
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from db.models import EpochMetric, Pipeline, Stage, StageStatus, aware, utcnow
from db.session import rowcount, session_scope
from db.transient import DatabaseUnavailable, is_transient, retry
from db.upsert import upsert
from sta_models.jsonio import finite_json
from worker import cpu_threads, fanout, handback, pipeline_state
from worker.artefacts import record_folder
from worker.dispatch import send_all
from worker.logs import StageLog, stage_logging
from worker.stage_context import DEFAULT_OUTAGE_S, HEARTBEAT_S, REDELIVERY_STALE_S, Inputs, StageContext
from worker.stage_graph import StageSpec

if TYPE_CHECKING:
    from sta_models.callbacks import Callbacks

log = logging.getLogger(__name__)

CANCEL_POLL_S = 1.0  # cancel_requested reads the DB at most this often
PROGRESS_MIN_S = 1.0  # progress writes at most this often
EPOCH_RETRY_S = 10.0  # an epoch row is retried this long inside the callback, then kept for later
HAND_BACK_FACTOR = 6  # the hand-back itself retries for this many outage_s


class Superseded(Exception):
    """The stage was taken over (recovered, cancelled or re-run) while this attempt ran."""


def one_line(exc: BaseException, limit: int = 480) -> str:
    text = relative_paths(f"{type(exc).__name__}: {exc}").strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def relative_paths(text: str) -> str:
    """``text`` with the data, artefact and log roots cut off the paths in it: error summaries and
    failed-item reasons are shown on the dashboard, which must not reveal the server's layout."""
    from stapipe_settings import get_settings

    settings = get_settings()
    roots = sorted({str(r) for r in (settings.data_dir, settings.artefact_dir, settings.log_dir)}, key=len,
                   reverse=True)
    for root in roots:
        text = text.replace(root.rstrip("/") + "/", "")
    return text


# ---------------------------------------------------------------------------------------------
# claim


def claim_stage(session: Session, stage_id: int, token: str, host: str, max_attempts: int) -> Stage | None:
    """Mark the stage running for this delivery (attempts + 1) or return ``None`` to drop it.

    A message whose token no longer matches (stage re-queued, re-run or cancelled since) is a
    stale duplicate. A redelivery of the *current* token while the stage is still running means the
    worker that had it was lost: it takes over once the heartbeat has been silent for
    ``REDELIVERY_STALE_S`` (a live attempt keeps beating, so a duplicate never runs in parallel).
    """
    deadline = time.monotonic() + REDELIVERY_STALE_S + 10
    while True:
        stage = session.scalars(
            select(Stage).where(Stage.id == stage_id).execution_options(populate_existing=True)
        ).one_or_none()
        session.rollback()  # end the read transaction (SQLite: release the lock)
        if stage is None or stage.celery_task_id != token:
            return None
        if stage.status == StageStatus.QUEUED:
            break
        if stage.status != StageStatus.RUNNING:
            return None
        silent = (utcnow() - aware(stage.updated_at)).total_seconds()
        if silent >= REDELIVERY_STALE_S:
            break
        if time.monotonic() > deadline:
            return None
        time.sleep(2.0)
    now = utcnow()
    if stage.attempts - stage.attempts_base >= max_attempts:
        reason = f"gave up after {stage.attempts - stage.attempts_base} attempts"
        if stage.error_summary:
            reason += f"; last: {stage.error_summary}"
        res = session.execute(
            update(Stage).where(Stage.id == stage_id, Stage.celery_task_id == token,
                                Stage.status.in_([StageStatus.QUEUED, StageStatus.RUNNING]))
            .values(status=StageStatus.FAILED, finished_at=now, updated_at=now, error_summary=reason[:500])
            .execution_options(synchronize_session=False)
        )
        if rowcount(res):
            pipeline_state.refresh(session, stage.pipeline_id)  # a failed stage enqueues nothing
        session.commit()
        return None
    res = session.execute(
        update(Stage)
        .where(Stage.id == stage_id, Stage.celery_task_id == token,
               or_(Stage.status == StageStatus.QUEUED,
                   and_(Stage.status == StageStatus.RUNNING,
                        Stage.updated_at < now - timedelta(seconds=REDELIVERY_STALE_S))))
        .values(status=StageStatus.RUNNING, attempts=Stage.attempts + 1, worker_host=host, started_at=now,
                updated_at=now, finished_at=None)
        .execution_options(synchronize_session=False)
    )
    if rowcount(res) != 1:
        session.rollback()
        return None
    pipeline_state.refresh(session, stage.pipeline_id)
    session.commit()
    return session.get(Stage, stage_id, populate_existing=True)


# ---------------------------------------------------------------------------------------------
# callbacks


@dataclass
class DbCallbacks:
    """Builds a :class:`sta_models.callbacks.Callbacks` that writes to the stage's rows.

    A transient database error never reaches the training loop: epoch rows that could not be
    written are kept and written with the next successful write (and before the stage finishes),
    progress is best effort, and the cancel check answers its last value. Only when the database
    has been unreachable for ``outage_s`` does the cancel check raise :class:`DatabaseUnavailable`
    — at a batch boundary, where ``last.pt`` holds the last complete epoch — so the runner hands
    the stage back to the queue.
    """

    url: str
    stage_id: int
    token: str
    stage_log: StageLog
    outage_s: float = DEFAULT_OUTAGE_S
    _last_cancel_check: float = 0.0
    _cancel: bool = False
    _last_progress: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pending: dict[int, dict[str, Any]] = field(default_factory=dict)  # epoch → row not yet written
    _down_since: float | None = None  # monotonic time of the first failure of the current outage

    def build(self) -> Callbacks:
        """The library's callbacks, bound to this attempt's DB writes."""
        from sta_models.callbacks import Callbacks

        return Callbacks(epoch_end=self.epoch_end, progress=self.progress,
                         cancel_requested=self.cancel_requested, message=self.message, started=self.started)

    def _write(self, work: Callable[[Session], Any], budget_s: float, what: str) -> Any:
        """Pending epochs + ``work`` in one transaction, retried for ``budget_s``; tracks outages."""
        def txn() -> Any:
            with session_scope(self.url) as s:
                if not owns_stage(s, self.stage_id, self.token):  # a late write of a superseded attempt
                    self._pending.clear()
                    raise Superseded("stage was taken over by another attempt")
                self.write_pending(s)
                out = work(s)
            self._pending.clear()
            return out

        started = time.monotonic()
        try:
            out = retry(txn, what, budget_s) if budget_s > 0 else txn()
        except Exception as exc:
            if not isinstance(exc, DatabaseUnavailable) and not is_transient(exc):
                raise
            if self._down_since is None:
                self._down_since = started
                self.message(f"database unavailable ({one_line(exc, 200)}); training goes on, "
                             f"{len(self._pending)} epoch row(s) kept for later")
            raise DatabaseUnavailable(one_line(exc)) from exc
        if self._down_since is not None:
            self.message(f"database back after {time.monotonic() - self._down_since:.1f} s")
            self._down_since = None
        return out

    def write_pending(self, session: Session) -> None:
        """Upsert the kept epoch rows in ``session``'s transaction (cleared by the caller's commit)."""
        for values in self._pending.values():
            upsert_epoch(session, self.stage_id, values)

    def outage_seconds(self) -> float:
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def flush(self, budget_s: float) -> None:
        """Write the kept epoch rows (before the stage finishes or is handed back)."""
        if self._pending:
            self._write(lambda s: None, budget_s, f"writing {len(self._pending)} kept epoch row(s)")

    def epoch_end(self, m: Any) -> None:
        """Upsert: a resumed or redelivered stage writes each epoch exactly once."""
        values = m.as_dict() if hasattr(m, "as_dict") else dict(m)
        values = {k: values.get(k) for k in ("epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds",
                                             "samples_per_s", "extra")}
        values["extra"] = finite_json(dict(values.get("extra") or {}))
        for k in ("train_loss", "val_loss", "val_accuracy", "lr", "seconds", "samples_per_s"):
            values[k] = _num(values[k])
        self._pending[int(values["epoch"])] = values
        with contextlib.suppress(DatabaseUnavailable):
            self._write(lambda s: s.execute(update(Stage).where(Stage.id == self.stage_id).values(
                updated_at=utcnow())), min(EPOCH_RETRY_S, self.outage_s / 2), f"recording epoch {values['epoch']}")
        # no log line here: the trainer already logs each epoch through ``message``

    def progress(self, done: int, total: int, what: str = "") -> None:
        now = time.monotonic()
        if done < total and now - self._last_progress < PROGRESS_MIN_S:
            return
        self._last_progress = now
        with contextlib.suppress(DatabaseUnavailable):  # best effort: the next call writes newer numbers
            self._write(lambda s: s.execute(update(Stage).where(Stage.id == self.stage_id).values(
                progress_done=int(done), progress_total=int(total), progress_what=(what or None) and what[:200],
                updated_at=utcnow())), 0, "writing progress")

    def started(self, info: dict[str, Any]) -> None:
        """The run's setup (recipe, random-init sources) as the stage's summary while it runs; the
        summary written on success replaces it. Best effort, like progress."""
        cpu_threads.rebalance(self.message, force=True)  # before the trainer logs its thread count
        with contextlib.suppress(DatabaseUnavailable):
            self._write(lambda s: s.execute(update(Stage).where(Stage.id == self.stage_id).values(
                summary=finite_json(json.loads(json.dumps(info, default=str))), updated_at=utcnow())),
                0, "recording the run's setup")

    def cancel_requested(self) -> bool:
        cpu_threads.rebalance(self.message)  # a batch boundary: follow the worker's load (throttled)
        if handback.requested():  # the worker is stopping: stop now, worker.handback hands the stage back
            return True
        now = time.monotonic()
        if now - self._last_cancel_check < CANCEL_POLL_S:
            return self._cancel
        self._last_cancel_check = now
        try:
            row = self._write(lambda s: s.execute(
                select(Stage.cancel_requested, Stage.celery_task_id, Stage.status)
                .where(Stage.id == self.stage_id)).one_or_none(), 0, "checking for a cancel request")
        except DatabaseUnavailable:
            if self.outage_seconds() >= self.outage_s:
                raise DatabaseUnavailable(
                    f"database unavailable for {self.outage_seconds():.0f} s (limit {self.outage_s:.0f} s)") from None
            return self._cancel
        if row is None or row.celery_task_id != self.token or row.status != StageStatus.RUNNING:
            raise Superseded("stage was taken over by another attempt")
        self._cancel = bool(row.cancel_requested)
        return self._cancel

    def message(self, msg: str) -> None:
        with self._lock:
            self.stage_log.write(msg)


def owns_stage(session: Session, stage_id: int, token: str) -> bool:
    """Whether this attempt (claim ``token``) still holds the running stage: every stage-side write
    checks it in its own transaction, so a cut-off worker's late writes are refused."""
    row = session.execute(select(Stage.celery_task_id, Stage.status).where(Stage.id == stage_id)).one_or_none()
    return row is not None and row.celery_task_id == token and row.status == StageStatus.RUNNING


def _num(v: Any) -> float | None:
    import math

    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None




def upsert_epoch(session: Session, stage_id: int, values: dict[str, Any]) -> None:
    """One row per (stage, epoch): a resumed or redelivered stage writes each epoch exactly once."""
    upsert(session, EpochMetric, {"stage_id": stage_id, "created_at": utcnow(), **values},
           conflict=("stage_id", "epoch"), update=[k for k in values if k != "epoch"])


class Heartbeat:
    """Bumps ``stages.updated_at`` every ``HEARTBEAT_S`` while the attempt runs (liveness for
    recover_stale and for redelivered messages); stops when the token is no longer ours."""

    def __init__(self, url: str, stage_id: int, token: str) -> None:
        self.url, self.stage_id, self.token = url, stage_id, token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{stage_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                with session_scope(self.url) as s:
                    s.execute(update(Stage).where(Stage.id == self.stage_id, Stage.celery_task_id == self.token,
                                                  Stage.status == StageStatus.RUNNING).values(updated_at=utcnow()))
            except Exception as exc:  # a DB blip must not kill the training; the next beat retries
                log.warning("heartbeat for stage %s failed: %s", self.stage_id, one_line(exc, 200),
                            exc_info=not is_transient(exc))


# ---------------------------------------------------------------------------------------------
# running a stage


@dataclass
class _Claimed:
    stage: Stage
    config: dict[str, Any]
    dataset_root: Path
    dirs: dict[str, Path]


def execute_stage(
    url: str, stage_id: int, token: str, host: str, max_attempts: int,
    spec: StageSpec,
    before: Callable[[StageContext], None] | None = None,
    outage_s: float = DEFAULT_OUTAGE_S,
) -> str:
    """Claim → run ``spec``'s body with heartbeat, log file and DB callbacks → finish. Returns the
    outcome ("dropped", "succeeded", "failed", "cancelled", "superseded", "fanout", "handed back",
    "abandoned"); the caller advances the pipeline after a final one (:data:`FINAL_OUTCOMES`).

    The body reads upstream outputs through ``ctx.inputs`` (only those ``spec`` declares). A
    fan-out stage's body returns its item keys and :func:`worker.fanout.start` hands them to item
    tasks; the stage stays running until its last item ("fanout").

    Transient database errors never fail the stage: the claim and the finish are retried for
    ``outage_s`` (raising :class:`DatabaseUnavailable` from the claim: the caller re-sends the
    message); a stage whose body or callbacks met a longer outage is handed back to the queue (its
    next claim counts an attempt, so ``max_attempts`` still bounds it); if even that cannot be
    written, the stage stays running without a heartbeat and recovery re-queues it. A worker that
    is stopping (``worker.handback``) hands its stage back without counting the attempt.
    """
    from sta_models.callbacks import Cancelled
    from sta_models.config import PipelineConfig

    def claim() -> _Claimed | None:
        with session_scope(url) as session:
            stage = claim_stage(session, stage_id, token, host, max_attempts)
            if stage is None:
                return None
            pipeline = session.get(Pipeline, stage.pipeline_id)
            assert pipeline is not None
            return _Claimed(stage, pipeline.config, Path(pipeline.dataset_root),
                            {s.kind: Path(s.output_dir or "") for s in pipeline.stages})

    claimed = retry(claim, f"claiming stage {stage_id}", outage_s)
    if claimed is None:
        log.info("stage %s: message %s dropped (stale or duplicate)", stage_id, token)
        return "dropped"
    stage = claimed.stage
    log_path = Path(stage.log_path or f"{stage.pipeline_id}-{stage.kind}.log")
    kind, pipeline_id, attempt = stage.kind, stage.pipeline_id, stage.attempts
    output_dir = Path(stage.output_dir or "")

    output_dir.mkdir(parents=True, exist_ok=True)
    outcome = "failed"
    with stage_logging(log_path) as stage_log:
        stage_log.write(f"== {kind} attempt {attempt} on {host} (task {token}) ==")
        cbs = DbCallbacks(url, stage_id, token, stage_log, outage_s=outage_s)
        ctx: StageContext | None = None
        try:
            try:
                if spec.kind != kind or spec.body is None:
                    raise RuntimeError(f"stage {stage_id} is a {kind} stage, but this worker ran {spec.kind}'s body")
                cfg = PipelineConfig.model_validate(claimed.config)
                ctx = StageContext(url=url, stage_id=stage_id, pipeline_id=pipeline_id, kind=kind, token=token,
                                   host=host, config=cfg, dataset_root=claimed.dataset_root, output_dir=output_dir,
                                   inputs=Inputs(kind, spec.inputs, claimed.dirs), callbacks=cbs.build(),
                                   stage_log=stage_log, outage_s=outage_s)
                with Heartbeat(url, stage_id, token):
                    if before is not None:
                        before(ctx)
                    result = spec.body(ctx)
                cbs.flush(outage_s)
                if spec.fan_out is not None:
                    stage_log.write("fan-out: work handed to per-item tasks")
                    outcome = fanout.start(ctx, spec, result) or "fanout"
                else:
                    outcome = _succeed(ctx, spec)
            except Superseded:
                stage_log.write("superseded by another attempt; stopping without changing the stage")
                outcome = "superseded"
            except Cancelled:
                assert ctx is not None
                cbs.flush(outage_s)
                outcome = "cancel"
                if handback.requested():
                    outcome = _hand_back(ctx, "worker stopping", cbs, counts_attempt=False)
                    if outcome == "handed back":
                        stage_log.write("worker stopping: stage handed back to the queue; it resumes from its "
                                        "last checkpoint (this attempt is not counted)")
                if outcome == "cancel":
                    stage_log.write("cancelled on request (checkpoint saved by the library)")
                    outcome = _set_final(ctx, StageStatus.CANCELLED, "cancelled on request", None)
            except Exception as exc:
                if ctx is None or not (isinstance(exc, DatabaseUnavailable) or is_transient(exc)):
                    raise
                stage_log.write(f"database unavailable: {one_line(exc)}; handing the stage back to the queue")
                outcome = _hand_back(ctx, f"handed back after a database outage: {one_line(exc, 300)}", cbs)
        except DatabaseUnavailable as exc:  # even the final write failed: recovery re-queues the stage
            stage_log.write(f"{one_line(exc)}; leaving the stage to recovery (no heartbeat from now on)")
            outcome = "abandoned"
        except BaseException as exc:  # noqa: BLE001 — everything else becomes a recorded failure
            trace = tb.format_exc()
            stage_log.write(f"FAILED: {one_line(exc)}\n{trace}")
            try:
                outcome = _set_final_ids(url, stage_id, token, outage_s, StageStatus.FAILED, one_line(exc), trace)
            except DatabaseUnavailable as db_exc:
                stage_log.write(f"{one_line(db_exc)}; leaving the stage to recovery")
                outcome = "abandoned"
            if not isinstance(exc, Exception):
                raise
        finally:
            _close_h5_handles()
        stage_log.write(f"== {kind} attempt {attempt}: {outcome} ==")
    return outcome


#: outcomes after which the stage is final: the caller advances its pipeline
FINAL_OUTCOMES = frozenset({str(StageStatus.SUCCEEDED), str(StageStatus.FAILED), str(StageStatus.CANCELLED)})


def _close_h5_handles() -> None:
    """Every stage task ends with no HDF5 file open (a later stage may replace any of them)."""
    import sys

    datasets = sys.modules.get("sta_models.datasets")  # not imported: nothing was opened
    if datasets is not None:
        datasets.close_handles()


def _succeed(ctx: StageContext, spec: StageSpec) -> str:
    def record() -> bool:
        with session_scope(ctx.url) as session:
            if not owns_stage(session, ctx.stage_id, ctx.token):
                return False
            n = record_folder(session, ctx.stage_id, spec, ctx.output_dir)
            ctx.stage_log.write(f"recorded {n} artefacts")
            return True

    if not retry(record, "recording artefacts", ctx.outage_s):
        ctx.stage_log.write("superseded by another attempt; its artefacts are not recorded")
        return "superseded"
    return _set_final(ctx, StageStatus.SUCCEEDED, None, None, summary=ctx.summary)


def _set_final(ctx: StageContext, status: str, error: str | None, trace: str | None,
               summary: dict[str, Any] | None = None) -> str:
    return _set_final_ids(ctx.url, ctx.stage_id, ctx.token, ctx.outage_s, status, error, trace, summary)


def _set_final_ids(url: str, stage_id: int, token: str, outage_s: float, status: str, error: str | None,
                   trace: str | None, summary: dict[str, Any] | None = None) -> str:
    """The attempt's final state, written once under its token (the caller advances the pipeline).

    Retried across transient errors; a retry after a commit whose answer was lost finds the stage
    already in ``status`` under this token and counts that as done.
    """
    now = utcnow()
    values: dict[str, Any] = {"status": status, "finished_at": now, "updated_at": now, "error_summary": error,
                              "traceback": trace, "cancel_requested": False}
    if summary:
        values["summary"] = finite_json(json.loads(json.dumps(summary, default=str)))

    def write() -> bool:
        with session_scope(url) as session:
            res = session.execute(
                update(Stage).where(Stage.id == stage_id, Stage.celery_task_id == token,
                                    Stage.status == StageStatus.RUNNING)
                .values(**values).execution_options(synchronize_session=False)
            )
            if rowcount(res) == 1:
                return True
            row = session.execute(select(Stage.status, Stage.celery_task_id)
                                  .where(Stage.id == stage_id)).one_or_none()
            return row is not None and row.celery_task_id == token and row.status == status

    if not retry(write, f"recording the stage as {status}", outage_s):
        return "superseded"
    return str(status)


def _hand_back(ctx: StageContext, reason: str, cbs: DbCallbacks, *, counts_attempt: bool = True) -> str:
    """Running → queued under a new token and a new message, with the kept epoch rows in the same
    transaction; the next claim resumes from the stage's checkpoint. After a database outage the
    next claim counts an attempt; a stopping worker's hand-back (``counts_attempt=False``) does not
    (``attempts_base`` + 1), and a cancel requested meanwhile wins ("cancel")."""
    new_token = uuid.uuid4().hex

    def write() -> tuple[str, str | None]:
        with session_scope(ctx.url) as session:
            now = utcnow()
            where = [Stage.id == ctx.stage_id, Stage.celery_task_id == ctx.token, Stage.status == StageStatus.RUNNING]
            values: dict[str, Any] = {"status": StageStatus.QUEUED, "celery_task_id": new_token, "queued_at": now,
                                      "updated_at": now}
            if counts_attempt:
                values["error_summary"] = reason[:500]
            else:
                where.append(Stage.cancel_requested.is_(False))
                values["attempts_base"] = Stage.attempts_base + 1
            res = session.execute(update(Stage).where(*where).values(**values)
                                  .execution_options(synchronize_session=False))
            if rowcount(res) != 1:  # taken over meanwhile, cancelled, or a retry after our commit's answer was lost
                row = session.execute(select(Stage.celery_task_id, Stage.cancel_requested, Stage.queue)
                                      .where(Stage.id == ctx.stage_id)).one_or_none()
                if row is not None and row.celery_task_id == new_token:
                    return "handed back", row.queue
                if row is not None and row.celery_task_id == ctx.token and row.cancel_requested:
                    return "cancel", None
                return "superseded", None
            cbs.write_pending(session)  # only while the stage is still ours: never a superseded epoch
            pipeline_state.refresh(session, ctx.pipeline_id)
            return "handed back", session.scalar(select(Stage.queue).where(Stage.id == ctx.stage_id))

    # Longer than the other writes: a hand-back touches no file, and a worker whose link comes back
    # after another host took the stage over learns it here (its UPDATE is refused by the token).
    verdict, queue = retry(write, "handing the stage back to the queue", ctx.outage_s * HAND_BACK_FACTOR)
    if verdict == "handed back":
        send_all([("stage", ctx.stage_id, queue or "gpu", new_token)])  # a lost send is re-sent by recover_stale
    return verdict


__all__ = ["execute_stage", "claim_stage", "owns_stage", "upsert_epoch", "DbCallbacks", "Heartbeat", "Superseded",
           "one_line", "relative_paths", "FINAL_OUTCOMES", "HEARTBEAT_S", "REDELIVERY_STALE_S"]
