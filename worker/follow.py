"""Following a pipeline in the terminal: one line per change (stage state, epoch, extraction counts)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from sqlalchemy import func, select

from db.models import EpochMetric, Pipeline, PipelineStatus, Stage
from db.session import session_scope
from worker.progress import progress_text, rounded

FINAL = (PipelineStatus.SUCCEEDED, PipelineStatus.FAILED, PipelineStatus.CANCELLED)


def _fmt(v: Any) -> str:
    return rounded(v)


def snapshot(url: str, pipeline_id: int) -> dict[str, Any]:
    with session_scope(url) as s:
        p = s.get(Pipeline, pipeline_id)
        if p is None:
            raise LookupError(f"no pipeline {pipeline_id}")
        stages = list(s.scalars(select(Stage).where(Stage.pipeline_id == pipeline_id).order_by(Stage.position)))
        epochs = dict(s.execute(select(EpochMetric.stage_id, func.max(EpochMetric.epoch)).where(
            EpochMetric.stage_id.in_([st.id for st in stages])).group_by(EpochMetric.stage_id)).all())
        last = {}
        for st in stages:
            if st.id in epochs:
                last[st.id] = s.scalars(select(EpochMetric).where(EpochMetric.stage_id == st.id,
                                                                  EpochMetric.epoch == epochs[st.id])).one()
        return {
            "status": p.status,
            "error": p.error_summary,
            "stages": [
                {"id": st.id, "kind": st.kind, "status": st.status, "attempts": st.attempts,
                 "done": st.progress_done, "failed": st.progress_failed, "total": st.progress_total,
                 "progress": progress_text(st.kind, p.config, st.progress_done, st.progress_total,
                                           st.progress_what, st.progress_failed),
                 "queue": st.queue,
                 "error": st.error_summary, "reused": st.reused_from_id,
                 "warnings": [w.get("message", "") for w in (st.summary or {}).get("warnings") or []]
                 if isinstance(st.summary, dict) else [],
                 "epoch": (last[st.id].epoch, last[st.id].train_loss, last[st.id].val_loss,
                           last[st.id].val_accuracy, dict(last[st.id].extra or {})) if st.id in last else None}
                for st in stages
            ],
        }


def describe(st: dict[str, Any]) -> str:
    text = f"{st['kind']:<16} {st['status']:<10}"
    if st["reused"]:
        text += f" (reused stage {st['reused']})"
    if st.get("progress") and st["status"] in ("running", "failed", "cancelled"):
        text += f" {st['progress']}"
    if st["epoch"]:
        ep, tl, vl, acc, extra = st["epoch"]
        text += f" · done epoch {ep}: train_loss={_fmt(tl)}"
        if vl is not None:
            text += f" val_loss={_fmt(vl)}"
        if acc is not None:
            text += f" val_acc={_fmt(acc)}"
        for k in ("cc", "nss"):
            if k in extra:
                text += f" {k}={_fmt(extra[k])}"
    if st["attempts"] > 1:
        text += f" attempt {st['attempts']}"
    if st["error"] and st["status"] in ("failed", "cancelled", "queued"):
        text += f" — {st['error']}"
    for w in st.get("warnings") or []:
        text += f"\n    WARNING {w}"
    return text


UNSERVED_AFTER_S = 20.0  # a freshly started worker needs a few seconds to register; warn after this


class UnservedWatch:
    """Says once per queue when a stage has waited ``UNSERVED_AFTER_S`` on a queue that no online
    worker consumes, and once more when a worker for it comes online."""

    def __init__(self, url: str, after_s: float = UNSERVED_AFTER_S):
        self.url, self.after_s = url, after_s
        self.start = time.monotonic()
        self.warned: set[str] = set()

    def check(self, snap: dict[str, Any]) -> list[str]:
        from worker.registry import queues_served, unserved_message

        waiting = {st["queue"] for st in snap["stages"] if st["status"] == "queued"}
        if not waiting and not self.warned:
            return []
        with session_scope(self.url) as s:
            served = queues_served(s)
        lines = []
        if time.monotonic() - self.start >= self.after_s:
            for q in sorted(waiting - served - self.warned):
                self.warned.add(q)
                lines.append(f"waiting: {unserved_message(q)}")
        for q in sorted(self.warned & served):
            self.warned.discard(q)
            lines.append(f"a worker for queue {q!r} is online now")
        return lines


def follow(url: str, pipeline_id: int, out: TextIO, *, interval: float = 1.0, timeout: float | None = None,
           alive: Callable[[], bool] | None = None) -> str:
    """Print changes until the pipeline reaches a final state; returns that state.

    ``alive`` (optional) is checked each round; when it returns False the follow stops with
    "aborted" (e.g. the embedded workers died).
    """
    seen: dict[int, str] = {}
    start = time.monotonic()
    watch = UnservedWatch(url)
    while True:
        snap = snapshot(url, pipeline_id)
        for line in watch.check(snap):
            out.write(f"[{time.monotonic() - start:7.1f}s] {line}\n")
            out.flush()
        for st in snap["stages"]:
            line = describe(st)
            if seen.get(st["id"]) != line:
                seen[st["id"]] = line
                out.write(f"[{time.monotonic() - start:7.1f}s] {line}\n")
                out.flush()
        if snap["status"] in FINAL:
            n_warn = sum(len(st.get("warnings") or []) for st in snap["stages"])
            out.write(f"pipeline {pipeline_id}: {snap['status']}" + (f" — {snap['error']}" if snap["error"] else "")
                      + (f" ({n_warn} health warning{'s' if n_warn > 1 else ''}, see above)" if n_warn else "")
                      + "\n")
            out.flush()
            return str(snap["status"])
        if timeout is not None and time.monotonic() - start > timeout:
            return "timeout"
        if alive is not None and not alive():
            return "aborted"
        time.sleep(interval)
