"""Running one stage inside a Celery task: claim, heartbeat, callbacks → DB, finish/fail/cancel.

The task bodies in worker.tasks only call the library; everything about state lives here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
import traceback as tb
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from db.models import (
    Artefact,
    EpochMetric,
    ExtractionItem,
    ItemStatus,
    Pipeline,
    Stage,
    StageStatus,
    utcnow,
)
from db.session import session_scope
from db.transient import DatabaseUnavailable, is_transient, retry
from sta_models.jsonio import finite_json
from worker import handback
from worker.logs import StageLog, stage_logging

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0  # a running stage bumps updated_at this often
REDELIVERY_STALE_S = 3 * HEARTBEAT_S  # a redelivered message may take over after this much silence
CANCEL_POLL_S = 1.0  # cancel_requested reads the DB at most this often
PROGRESS_MIN_S = 1.0  # progress writes at most this often
EPOCH_RETRY_S = 10.0  # an epoch row is retried this long inside the callback, then kept for later
DEFAULT_OUTAGE_S = 90.0  # settings.db_outage_s: an outage longer than this hands the stage back
HAND_BACK_FACTOR = 6  # the hand-back itself retries for this many outage_s


class Superseded(Exception):
    """The stage was taken over (recovered, cancelled or re-run) while this attempt ran."""


class FanOut(Exception):
    """Raised by a stage body that handed its work to other tasks (extract); the stage stays running."""


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
        silent = (utcnow() - _aware(stage.updated_at)).total_seconds()
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
        session.commit()
        if res.rowcount:
            _after_final(session, stage.pipeline_id)
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
    if res.rowcount != 1:
        session.rollback()
        return None
    _refresh(session, stage.pipeline_id)
    session.commit()
    return session.get(Stage, stage_id, populate_existing=True)


def _aware(dt):  # type: ignore[no-untyped-def]
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=utcnow().tzinfo)
    return dt


def _refresh(session: Session, pipeline_id: int) -> None:
    from worker.orchestration import refresh_pipeline_status

    pipeline = session.get(Pipeline, pipeline_id, populate_existing=True)
    if pipeline is not None:
        refresh_pipeline_status(session, pipeline)


def _after_final(session: Session, pipeline_id: int) -> None:
    """A stage reached a final state: advance the pipeline (enqueues dependants, updates status)."""
    from worker.orchestration import advance

    advance(session, pipeline_id)


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

    def build(self):  # type: ignore[no-untyped-def]
        from sta_models.callbacks import Callbacks

        return Callbacks(epoch_end=self.epoch_end, progress=self.progress,
                         cancel_requested=self.cancel_requested, message=self.message)

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

    def cancel_requested(self) -> bool:
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
    """INSERT … ON CONFLICT (stage_id, epoch) DO UPDATE on both SQLite and PostgreSQL."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(EpochMetric).values(stage_id=stage_id, created_at=utcnow(), **values)
    updates = {k: stmt.excluded[k] for k in values if k != "epoch"}
    session.execute(stmt.on_conflict_do_update(index_elements=["stage_id", "epoch"], set_=updates))


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
# artefacts


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def artefact_kind(stage_kind: str, path: Path) -> str:
    ext = path.suffix.lower()
    if ext == ".pt":
        return "checkpoint"
    if ext == ".mp4":
        return "video"
    if ext in (".json", ".csv"):
        return "metrics" if path.stem.startswith("metrics") else "report"
    if ext == ".png":
        return "prediction" if stage_kind == "evaluate" and "preview" not in path.parts else "preview"
    if ext == ".log":
        return "log"
    if ext == ".h5":
        return {"extract": "features", "crops": "crops", "pseudo_gt": "pseudo_gt"}.get(
            stage_kind, "cams" if stage_kind.startswith("cams") else "data")
    return "file"


def upsert_artefact(session: Session, stage_id: int, stage_kind: str, path: Path, size: int, sha256: str) -> None:
    """INSERT … ON CONFLICT (stage_id, path) DO UPDATE: one statement on SQLite and PostgreSQL."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(Artefact).values(stage_id=stage_id, kind=artefact_kind(stage_kind, path), path=str(path),
                                   size=size, sha256=sha256, created_at=utcnow())
    session.execute(stmt.on_conflict_do_update(index_elements=["stage_id", "path"],
                                               set_={"size": stmt.excluded.size, "sha256": stmt.excluded.sha256}))


def record_artefact(session: Session, stage_id: int, stage_kind: str, path: Path) -> None:
    """Upsert one artefact row (path, size, sha256) — idempotent across attempts."""
    upsert_artefact(session, stage_id, stage_kind, path, path.stat().st_size, sha256_file(path))


def record_folder(session: Session, stage_id: int, stage_kind: str, folder: Path) -> int:
    """Record every file under ``folder`` (temporary ``*.tmp`` files excluded); drop rows of files
    that are gone. Returns the number of files."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith((".tmp", ".partial")))
    keep = {str(p) for p in files}
    for art in session.scalars(select(Artefact).where(Artefact.stage_id == stage_id)):
        if art.path not in keep:
            session.delete(art)
    for p in files:
        record_artefact(session, stage_id, stage_kind, p)
    return len(files)


# ---------------------------------------------------------------------------------------------
# running a stage


@dataclass
class StageContext:
    """What a stage body gets: its config, folders and callbacks (no DB access needed)."""

    url: str
    stage_id: int
    pipeline_id: int
    kind: str
    token: str
    host: str
    config: Any  # sta_models.config.PipelineConfig
    dataset_root: Path
    output_dir: Path
    dirs: dict[str, Path]  # output folder of every stage of the pipeline (a reused stage's source)
    callbacks: Any
    stage_log: StageLog
    summary: dict[str, Any] = field(default_factory=dict)  # stored in stages.summary on success
    outage_s: float = DEFAULT_OUTAGE_S  # how long stage-side writes retry a transient DB error


def execute_stage(
    url: str, stage_id: int, token: str, host: str, max_attempts: int,
    body: Callable[[StageContext], None],
    before: Callable[[StageContext], None] | None = None,
    outage_s: float = DEFAULT_OUTAGE_S,
) -> str:
    """Claim → run ``body`` with heartbeat, log file and DB callbacks → finish. Returns the outcome
    ("dropped", "succeeded", "failed", "cancelled", "superseded", "fanout", "handed back",
    "abandoned").

    Transient database errors never fail the stage: the claim and the finish are retried for
    ``outage_s`` (raising :class:`DatabaseUnavailable` from the claim: the caller re-sends the
    message); a stage whose body or callbacks met a longer outage is handed back to the queue (its
    next claim counts an attempt, so ``max_attempts`` still bounds it); if even that cannot be
    written, the stage stays running without a heartbeat and recovery re-queues it. A worker that
    is stopping (``worker.handback``) hands its stage back without counting the attempt.
    """
    from sta_models.callbacks import Cancelled
    from sta_models.config import PipelineConfig

    def claim() -> tuple[Any, ...] | None:
        with session_scope(url) as session:
            stage = claim_stage(session, stage_id, token, host, max_attempts)
            if stage is None:
                return None
            pipeline = session.get(Pipeline, stage.pipeline_id)
            assert pipeline is not None
            return (stage, pipeline.config, Path(pipeline.dataset_root),
                    {s.kind: Path(s.output_dir or "") for s in pipeline.stages})

    claimed = retry(claim, f"claiming stage {stage_id}", outage_s)
    if claimed is None:
        log.info("stage %s: message %s dropped (stale or duplicate)", stage_id, token)
        return "dropped"
    stage, config, dataset_root, dirs = claimed
    cfg = PipelineConfig.model_validate(config)
    log_path = Path(stage.log_path or f"{stage.pipeline_id}-{stage.kind}.log")
    kind, pipeline_id, attempt = stage.kind, stage.pipeline_id, stage.attempts
    output_dir = Path(stage.output_dir or "")

    output_dir.mkdir(parents=True, exist_ok=True)
    outcome = "failed"
    with stage_logging(log_path) as stage_log:
        stage_log.write(f"== {kind} attempt {attempt} on {host} (task {token}) ==")
        cbs = DbCallbacks(url, stage_id, token, stage_log, outage_s=outage_s)
        ctx = StageContext(url=url, stage_id=stage_id, pipeline_id=pipeline_id, kind=kind, token=token, host=host,
                           config=cfg, dataset_root=dataset_root, output_dir=output_dir, dirs=dirs,
                           callbacks=cbs.build(), stage_log=stage_log, outage_s=outage_s)
        try:
            try:
                with Heartbeat(url, stage_id, token):
                    if before is not None:
                        before(ctx)
                    body(ctx)
                cbs.flush(outage_s)
                outcome = _succeed(ctx)
            except FanOut:
                stage_log.write("fan-out: work handed to per-item tasks")
                outcome = "fanout"
            except Superseded:
                stage_log.write("superseded by another attempt; stopping without changing the stage")
                outcome = "superseded"
            except Cancelled:
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
                if not (isinstance(exc, DatabaseUnavailable) or is_transient(exc)):
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
                outcome = _set_final(ctx, StageStatus.FAILED, one_line(exc), trace)
            except DatabaseUnavailable as db_exc:
                stage_log.write(f"{one_line(db_exc)}; leaving the stage to recovery")
                outcome = "abandoned"
            if not isinstance(exc, Exception):
                raise
        finally:
            _close_h5_handles()
        stage_log.write(f"== {kind} attempt {attempt}: {outcome} ==")
    return outcome


def _close_h5_handles() -> None:
    """Every stage task ends with no HDF5 file open (a later stage may replace any of them)."""
    import sys

    datasets = sys.modules.get("sta_models.datasets")  # not imported: nothing was opened
    if datasets is not None:
        datasets.close_handles()


def _succeed(ctx: StageContext) -> str:
    def record() -> bool:
        with session_scope(ctx.url) as session:
            if not owns_stage(session, ctx.stage_id, ctx.token):
                return False
            n = record_folder(session, ctx.stage_id, ctx.kind, ctx.output_dir)
            ctx.stage_log.write(f"recorded {n} artefacts")
            return True

    if not retry(record, "recording artefacts", ctx.outage_s):
        ctx.stage_log.write("superseded by another attempt; its artefacts are not recorded")
        return "superseded"
    return _set_final(ctx, StageStatus.SUCCEEDED, None, None, summary=ctx.summary)


def _set_final(ctx: StageContext, status: str, error: str | None, trace: str | None,
               summary: dict[str, Any] | None = None) -> str:
    """The attempt's final state, written once under its token, then the pipeline advanced.

    Retried across transient errors; a retry after a commit whose answer was lost finds the stage
    already in ``status`` under this token and counts that as done.
    """
    now = utcnow()
    values: dict[str, Any] = {"status": status, "finished_at": now, "updated_at": now, "error_summary": error,
                              "traceback": trace, "cancel_requested": False}
    if summary:
        import json

        values["summary"] = finite_json(json.loads(json.dumps(summary, default=str)))

    def write() -> bool:
        with session_scope(ctx.url) as session:
            res = session.execute(
                update(Stage).where(Stage.id == ctx.stage_id, Stage.celery_task_id == ctx.token,
                                    Stage.status == StageStatus.RUNNING)
                .values(**values).execution_options(synchronize_session=False)
            )
            if res.rowcount == 1:
                return True
            row = session.execute(select(Stage.status, Stage.celery_task_id)
                                  .where(Stage.id == ctx.stage_id)).one_or_none()
            return row is not None and row.celery_task_id == ctx.token and row.status == status

    if not retry(write, f"recording the stage as {status}", ctx.outage_s):
        return "superseded"

    def advance() -> None:
        with session_scope(ctx.url) as session:
            _after_final(session, ctx.pipeline_id)

    retry(advance, "advancing the pipeline", ctx.outage_s)
    return str(status)


def _hand_back(ctx: StageContext, reason: str, cbs: DbCallbacks, *, counts_attempt: bool = True) -> str:
    """Running → queued under a new token and a new message, with the kept epoch rows in the same
    transaction; the next claim resumes from the stage's checkpoint. After a database outage the
    next claim counts an attempt; a stopping worker's hand-back (``counts_attempt=False``) does not
    (``attempts_base`` + 1), and a cancel requested meanwhile wins ("cancel")."""
    import uuid

    from worker.orchestration import _send_all

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
            if res.rowcount != 1:  # taken over meanwhile, cancelled, or a retry after our commit's answer was lost
                row = session.execute(select(Stage.celery_task_id, Stage.cancel_requested, Stage.queue)
                                      .where(Stage.id == ctx.stage_id)).one_or_none()
                if row is not None and row.celery_task_id == new_token:
                    return "handed back", row.queue
                if row is not None and row.celery_task_id == ctx.token and row.cancel_requested:
                    return "cancel", None
                return "superseded", None
            cbs.write_pending(session)  # only while the stage is still ours: never a superseded epoch
            _refresh(session, ctx.pipeline_id)
            return "handed back", session.scalar(select(Stage.queue).where(Stage.id == ctx.stage_id))

    # Longer than the other writes: a hand-back touches no file, and a worker whose link comes back
    # after another host took the stage over learns it here (its UPDATE is refused by the token).
    verdict, queue = retry(write, "handing the stage back to the queue", ctx.outage_s * HAND_BACK_FACTOR)
    if verdict == "handed back":
        _send_all([("stage", ctx.stage_id, queue or "gpu", new_token)])  # a lost send is re-sent by recover_stale
    return verdict


# ---------------------------------------------------------------------------------------------
# extraction items


@dataclass(frozen=True)
class ItemJob:
    """What an ``extract_item`` task needs, read in its claim transaction."""

    item_id: int
    token: str
    stage_id: int
    video_id: str
    video: Path
    out: Path
    size: int
    log_path: str | None
    skip: bool  # the stage is no longer running or a cancel was requested: record "cancelled"


def _returning(session: Session, stmt: Any, columns: tuple[Any, ...], reread: Any) -> Any:
    """Execute a conditional UPDATE and return ``columns`` of the updated row (``None`` when no row
    matched) in the same round trip with ``RETURNING`` (PostgreSQL, SQLite >= 3.35); otherwise
    re-read them with ``reread`` (a SELECT of ``columns``) inside the same transaction."""
    opts = {"synchronize_session": False}
    if session.get_bind().dialect.update_returning:
        return session.execute(stmt.returning(*columns), execution_options=opts).one_or_none()
    if session.execute(stmt, execution_options=opts).rowcount != 1:
        return None
    return session.execute(reread).one()


def claim_item(session: Session, item_id: int, token: str, host: str) -> ItemJob | None:
    """Claim one extraction item for this delivery (queued → running, attempts + 1) and read what
    the task needs, in one transaction of two statements; ``None``: drop the message.

    The claim is a conditional ``UPDATE … WHERE celery_task_id = :token AND status = 'queued'
    RETURNING …`` (no SELECT first), so a duplicate, a stale redelivery or a message for an item
    that was re-queued since finds nothing to claim. A redelivery of the *current* token while the
    item is still running (its worker was lost) takes over once the item has been silent for
    ``REDELIVERY_STALE_S``.
    """
    cols = (ExtractionItem.stage_id, ExtractionItem.video_id)
    reread = select(*cols).where(ExtractionItem.id == item_id)
    mine = (ExtractionItem.id == item_id, ExtractionItem.celery_task_id == token)
    while True:
        now = utcnow()
        row = _returning(session, update(ExtractionItem).where(*mine, ExtractionItem.status == ItemStatus.QUEUED)
                         .values(status=ItemStatus.RUNNING, attempts=ExtractionItem.attempts + 1,
                                 worker_host=host, updated_at=now), cols, reread)
        if row is not None:
            break
        session.rollback()
        # not queued: a running item with our token is a redelivery after its worker died
        cur = session.execute(select(ExtractionItem.status, ExtractionItem.updated_at).where(*mine)).one_or_none()
        session.rollback()
        if cur is None or cur.status != ItemStatus.RUNNING:
            return None  # stale or duplicate message
        silent = (now - _aware(cur.updated_at)).total_seconds()
        if silent < REDELIVERY_STALE_S:
            time.sleep(max(0.0, REDELIVERY_STALE_S - silent) + 0.1)
            continue
        row = _returning(session, update(ExtractionItem).where(
            *mine, ExtractionItem.status == ItemStatus.RUNNING,
            ExtractionItem.updated_at < now - timedelta(seconds=REDELIVERY_STALE_S))
            .values(attempts=ExtractionItem.attempts + 1, worker_host=host, updated_at=now), cols, reread)
        if row is None:
            session.rollback()
            return None  # another copy took it over first
        break
    stage = session.execute(
        select(Stage.status, Stage.cancel_requested, Stage.output_dir, Stage.log_path, Pipeline.dataset_root,
               Pipeline.config).join(Pipeline, Pipeline.id == Stage.pipeline_id).where(Stage.id == row.stage_id)
    ).one()
    if session.get_bind().dialect.name == "postgresql":
        # The claim needs no WAL flush of its own (saves an fsync per video): if a PostgreSQL crash
        # loses it, the item is simply still queued under this token, finish_item() then finds no
        # running item and changes nothing, and recover_stale() sends the message again. A later
        # durable commit (this item's result) flushes the claim with it, as WAL is sequential.
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
    session.commit()
    size = int((stage.config or {}).get("extract", {}).get("size", 356))
    return ItemJob(
        item_id=item_id, token=token, stage_id=row.stage_id, video_id=row.video_id,
        video=Path(stage.dataset_root) / "AVE" / f"{row.video_id}.mp4",
        out=Path(stage.output_dir or ".") / f"{row.video_id}.h5", size=size, log_path=stage.log_path,
        skip=stage.status != StageStatus.RUNNING or bool(stage.cancel_requested),
    )


def finish_item(session: Session, job: ItemJob, status: str, reason: str | None, seconds: float,
                artefact: tuple[int, str] | None = None) -> tuple[bool, bool]:
    """Record an item's outcome and count it in the stage's live progress, in one transaction:
    a conditional UPDATE of the item (still running under this claim's token), the artefact
    upsert, and ``progress_done``/``progress_failed`` incremented in place (no COUNT(*)).

    The item UPDATE makes each item count once: a superseded attempt (re-queued by recovery or a
    re-run since it was claimed) changes nothing. Returns ``(recorded, maybe_last)``: whether this
    attempt's result was recorded, and whether this item may have been the stage's last open one
    (the counters reached the total while the stage is running) — the caller then runs :func:`finish_extract_if_done`, which re-checks with the item rows (authoritative)
    and finishes the stage at most once. ``artefact`` is ``(size, sha256)`` of ``job.out``,
    computed before the transaction so no lock is held while hashing.
    """
    now = utcnow()
    ok = status == ItemStatus.SUCCEEDED
    res = session.execute(
        update(ExtractionItem).where(ExtractionItem.id == job.item_id, ExtractionItem.celery_task_id == job.token,
                                     ExtractionItem.status == ItemStatus.RUNNING)
        .values(status=status, reason=reason, seconds=seconds, updated_at=now,
                output_path=str(job.out) if ok else None),
        execution_options={"synchronize_session": False},
    )
    if res.rowcount != 1:
        session.rollback()
        return False, False
    if ok and artefact is not None:
        upsert_artefact(session, job.stage_id, "extract", job.out, *artefact)
    cols = (Stage.status, Stage.progress_done, Stage.progress_failed, Stage.progress_total)
    row = _returning(
        session,
        update(Stage).where(Stage.id == job.stage_id).values(
            progress_done=Stage.progress_done + (1 if ok else 0),
            progress_failed=Stage.progress_failed + (0 if ok else 1), updated_at=now),
        cols, select(*cols).where(Stage.id == job.stage_id))
    session.commit()
    return True, row is not None and row.status == StageStatus.RUNNING and (
        row.progress_done + row.progress_failed >= row.progress_total)


def update_extract_progress(session: Session, stage_id: int) -> tuple[int, int, int]:
    rows = dict(session.execute(select(ExtractionItem.status, func.count()).where(
        ExtractionItem.stage_id == stage_id).group_by(ExtractionItem.status)).all())
    done = rows.get(ItemStatus.SUCCEEDED, 0)
    failed = rows.get(ItemStatus.FAILED, 0)
    total = sum(rows.values())
    session.execute(update(Stage).where(Stage.id == stage_id).values(
        progress_done=done, progress_failed=failed, progress_total=total, progress_what="videos",
        updated_at=utcnow()))
    return done, failed, total


def finish_extract_if_done(session: Session, stage_id: int) -> str | None:
    """When every item is final, finish the extract stage: succeeded if at least
    ``config.extract.min_success_fraction`` of the videos extracted, else failed. Idempotent."""
    stage = session.get(Stage, stage_id, populate_existing=True)
    if stage is None or stage.status != StageStatus.RUNNING:
        session.rollback()
        return None
    open_items = session.scalar(select(func.count()).where(
        ExtractionItem.stage_id == stage_id,
        ExtractionItem.status.in_([ItemStatus.PENDING, ItemStatus.QUEUED, ItemStatus.RUNNING]))) or 0
    if open_items:
        session.rollback()
        return None
    done, failed, total = update_extract_progress(session, stage_id)
    pipeline = session.get(Pipeline, stage.pipeline_id)
    assert pipeline is not None
    min_frac = float(pipeline.config.get("extract", {}).get("min_success_fraction", 0.9))
    failures = {i.video_id: i.reason for i in session.scalars(select(ExtractionItem).where(
        ExtractionItem.stage_id == stage_id, ExtractionItem.status == ItemStatus.FAILED))}
    summary = {"videos": total, "extracted": done, "failed": failed, "failures": failures}
    now = utcnow()
    if stage.cancel_requested:
        status, error = StageStatus.CANCELLED, "cancelled on request"
    elif total and done / total >= min_frac:
        status, error = StageStatus.SUCCEEDED, None
    else:
        status = StageStatus.FAILED
        error = f"only {done}/{total} videos extracted (needs {min_frac:.0%})"
    if status == StageStatus.SUCCEEDED and stage.output_dir:
        log_file = Path(stage.output_dir) / "extraction.json"
        import json

        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(json.dumps(summary, indent=1, sort_keys=True))
        record_artefact(session, stage_id, "extract", log_file)
    res = session.execute(
        update(Stage).where(Stage.id == stage_id, Stage.status == StageStatus.RUNNING)
        .values(status=status, finished_at=now, updated_at=now, error_summary=error, summary=summary,
                cancel_requested=False)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if res.rowcount == 1:
        if stage.log_path:
            from worker.logs import append_line

            append_line(stage.log_path, f"extraction finished: {done} ok, {failed} failed of {total} → {status}")
        _after_final(session, stage.pipeline_id)
        return str(status)
    return None
