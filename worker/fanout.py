"""Fan-out: a stage whose work is one task per item (``StageSpec.fan_out``; today ``extract``).

The stage's body lists the item keys; :func:`start` creates (or re-queues) one item row per key and
sends one message each; an item task claims its row (:func:`claim_item`), runs the declared
``FanOut.run`` and records the result (:func:`finish_item`); the item that may have been the last
runs :func:`finish_if_done`, which finishes the stage once. Nothing here advances the pipeline:
the caller does that when :func:`finish_if_done` returns a final state.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from db.models import ExtractionItem, ItemStatus, Pipeline, Stage, StageStatus, aware, utcnow
from db.session import rowcount, session_scope
from worker.artefacts import record_artefact, upsert_artefact
from worker.dispatch import send_all
from worker.logs import append_line
from worker.stage_context import REDELIVERY_STALE_S, ItemJob, StageContext
from worker.stage_graph import FanOut, StageSpec


def _fan(spec: StageSpec) -> FanOut:
    if spec.fan_out is None:
        raise ValueError(f"stage {spec.kind} does not fan out")
    return spec.fan_out


# ---------------------------------------------------------------------------------------------
# start (inside the stage's own task)


def start(ctx: StageContext, spec: StageSpec, keys: Iterable[str]) -> str | None:
    """Item rows for ``keys`` (new ones inserted queued, earlier ones re-queued unless succeeded and
    not ``redo``), one message each on the stage's queue. Returns the stage's final state when
    nothing was left to do (it is finished here), else ``None`` (the items finish it)."""
    fan = _fan(spec)
    keys = sorted(set(keys))
    with session_scope(ctx.url) as s:
        have = {i.video_id: i for i in s.scalars(select(ExtractionItem).where(ExtractionItem.stage_id == ctx.stage_id))}
        redo = 0
        for item in have.values():  # a re-run or redelivered fan-out: re-queue what is not done
            out = Path(item.output_path) if item.output_path else None
            if item.status == ItemStatus.SUCCEEDED and not fan.redo(ctx, item.video_id, out):
                continue
            redo += item.status in (ItemStatus.SUCCEEDED, ItemStatus.FAILED)
            item.status = ItemStatus.QUEUED
            item.reason = None
            item.celery_task_id = uuid.uuid4().hex
            item.updated_at = utcnow()
        # new items are inserted already queued with their token: one batched INSERT, no UPDATEs
        new = [ExtractionItem(stage_id=ctx.stage_id, pipeline_id=ctx.pipeline_id, video_id=key,
                              status=ItemStatus.QUEUED, celery_task_id=uuid.uuid4().hex, updated_at=utcnow())
               for key in keys if key not in have]
        s.add_all(new)
        s.flush()
        messages = [(item.id, item.celery_task_id or "") for item in [*have.values(), *new]
                    if item.status == ItemStatus.QUEUED]
        update_progress(s, ctx.stage_id, fan.unit)
    ctx.callbacks.log(f"fan-out: {len(keys)} {fan.unit} ({len(messages)} to do, {redo} of them failed before "
                      f"or changed since)")
    send_all(("item", item_id, str(spec.queue), token) for item_id, token in messages)
    if messages:
        return None
    with session_scope(ctx.url) as s:
        return finish_if_done(s, ctx.stage_id, spec)


# ---------------------------------------------------------------------------------------------
# one item


def _returning(session: Session, stmt: Any, columns: tuple[Any, ...], reread: Any) -> Any:
    """Execute a conditional UPDATE and return ``columns`` of the updated row (``None`` when no row
    matched) in the same round trip with ``RETURNING`` (PostgreSQL, SQLite >= 3.35); otherwise
    re-read them with ``reread`` (a SELECT of ``columns``) inside the same transaction."""
    opts = {"synchronize_session": False}
    if session.get_bind().dialect.update_returning:
        return session.execute(stmt.returning(*columns), execution_options=opts).one_or_none()
    if rowcount(session.execute(stmt, execution_options=opts)) != 1:
        return None
    return session.execute(reread).one()


def claim_item(session: Session, item_id: int, token: str, host: str) -> ItemJob | None:
    """Claim one item for this delivery (queued → running, attempts + 1) and read what the task
    needs, in one transaction of two statements; ``None``: drop the message.

    The claim is a conditional ``UPDATE … WHERE celery_task_id = :token AND status = 'queued'
    RETURNING …`` (no SELECT first), so a duplicate, a stale redelivery or a message for an item
    that was re-queued since finds nothing to claim. A redelivery of the *current* token while the
    item is still running (its worker was lost) takes over once the item has been silent for
    ``REDELIVERY_STALE_S``.
    """
    from sta_models.config import PipelineConfig

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
        silent = (now - aware(cur.updated_at)).total_seconds()
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
        select(Stage.kind, Stage.status, Stage.cancel_requested, Stage.output_dir, Stage.log_path,
               Pipeline.dataset_root, Pipeline.config)
        .join(Pipeline, Pipeline.id == Stage.pipeline_id).where(Stage.id == row.stage_id)
    ).one()
    if session.get_bind().dialect.name == "postgresql":
        # The claim needs no WAL flush of its own (saves an fsync per video): if a PostgreSQL crash
        # loses it, the item is simply still queued under this token, finish_item() then finds no
        # running item and changes nothing, and recover_stale() sends the message again. A later
        # durable commit (this item's result) flushes the claim with it, as WAL is sequential.
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
    session.commit()
    return ItemJob(
        item_id=item_id, token=token, stage_id=row.stage_id, kind=stage.kind, key=row.video_id,
        dataset_root=Path(stage.dataset_root), output_dir=Path(stage.output_dir or "."),
        config=PipelineConfig.model_validate(stage.config or {}), log_path=stage.log_path,
        skip=stage.status != StageStatus.RUNNING or bool(stage.cancel_requested),
    )


def finish_item(session: Session, job: ItemJob, spec: StageSpec, status: str, reason: str | None, seconds: float,
                artefact: tuple[Path, int, str] | None = None) -> tuple[bool, bool]:
    """Record an item's outcome and count it in the stage's live progress, in one transaction:
    a conditional UPDATE of the item (still running under this claim's token), the artefact
    upsert, and ``progress_done``/``progress_failed`` incremented in place (no COUNT(*)).

    The item UPDATE makes each item count once: a superseded attempt (re-queued by recovery or a
    re-run since it was claimed) changes nothing. Returns ``(recorded, maybe_last)``: whether this
    attempt's result was recorded, and whether this item may have been the stage's last open one
    (the counters reached the total while the stage is running) — the caller then runs
    :func:`finish_if_done`, which re-checks with the item rows (authoritative) and finishes the
    stage at most once. ``artefact`` is ``(path, size, sha256)`` of the item's output, computed
    before the transaction so no lock is held while hashing.
    """
    now = utcnow()
    ok = status == ItemStatus.SUCCEEDED
    res = session.execute(
        update(ExtractionItem).where(ExtractionItem.id == job.item_id, ExtractionItem.celery_task_id == job.token,
                                     ExtractionItem.status == ItemStatus.RUNNING)
        .values(status=status, reason=reason, seconds=seconds, updated_at=now,
                output_path=str(artefact[0]) if ok and artefact else None),
        execution_options={"synchronize_session": False},
    )
    if rowcount(res) != 1:
        session.rollback()
        return False, False
    if ok and artefact is not None:
        upsert_artefact(session, job.stage_id, spec, *artefact)
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


# ---------------------------------------------------------------------------------------------
# the stage's end


def update_progress(session: Session, stage_id: int, unit: str) -> tuple[int, int, int]:
    """Recount the stage's items into its progress columns; ``(done, failed, total)``."""
    rows = dict(session.execute(select(ExtractionItem.status, func.count()).where(
        ExtractionItem.stage_id == stage_id).group_by(ExtractionItem.status)).all())
    done = rows.get(ItemStatus.SUCCEEDED, 0)
    failed = rows.get(ItemStatus.FAILED, 0)
    total = sum(rows.values())
    session.execute(update(Stage).where(Stage.id == stage_id).values(
        progress_done=done, progress_failed=failed, progress_total=total, progress_what=unit,
        updated_at=utcnow()))
    return done, failed, total


def finish_if_done(session: Session, stage_id: int, spec: StageSpec) -> str | None:
    """When every item is final, finish the stage: succeeded if at least ``fan_out.min_success``
    of the items succeeded, else failed (cancelled when a cancel was requested). Idempotent;
    returns the state it wrote (the caller advances the pipeline) or ``None``."""
    from sta_models.config import PipelineConfig

    fan = _fan(spec)
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
    done, failed, total = update_progress(session, stage_id, fan.unit)
    pipeline = session.get(Pipeline, stage.pipeline_id)
    assert pipeline is not None
    min_frac = fan.min_success(PipelineConfig.model_validate(pipeline.config or {}))
    failures = {i.video_id: i.reason for i in session.scalars(select(ExtractionItem).where(
        ExtractionItem.stage_id == stage_id, ExtractionItem.status == ItemStatus.FAILED))}
    summary = {fan.unit: total, fan.done: done, "failed": failed, "failures": failures}
    now = utcnow()
    if stage.cancel_requested:
        status, error = StageStatus.CANCELLED, "cancelled on request"
    elif total and done / total >= min_frac:
        status, error = StageStatus.SUCCEEDED, None
    else:
        status = StageStatus.FAILED
        error = f"only {done}/{total} {fan.unit} {fan.done} (needs {min_frac:.0%})"
    if status == StageStatus.SUCCEEDED and stage.output_dir and fan.report:
        report = Path(stage.output_dir) / fan.report
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(summary, indent=1, sort_keys=True))
        record_artefact(session, stage_id, spec, report)
    res = session.execute(
        update(Stage).where(Stage.id == stage_id, Stage.status == StageStatus.RUNNING)
        .values(status=status, finished_at=now, updated_at=now, error_summary=error, summary=summary,
                cancel_requested=False)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if rowcount(res) != 1:
        return None
    if stage.log_path:
        append_line(stage.log_path, f"{spec.kind} finished: {done} ok, {failed} failed of {total} → {status}")
    return str(status)


__all__ = ["start", "claim_item", "finish_item", "update_progress", "finish_if_done"]
