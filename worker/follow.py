"""Following a pipeline in the terminal: one line per change (stage state, epoch, extraction counts)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from sqlalchemy import func, select

from db.models import EpochMetric, Pipeline, PipelineStatus, Stage
from db.session import session_scope

FINAL = (PipelineStatus.SUCCEEDED, PipelineStatus.FAILED, PipelineStatus.CANCELLED)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


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
    if st["total"]:
        text += f" {st['done']}/{st['total']}" + (f" ({st['failed']} failed)" if st["failed"] else "")
    if st["epoch"]:
        ep, tl, vl, acc, extra = st["epoch"]
        text += f" epoch {ep} train_loss={_fmt(tl)} val_loss={_fmt(vl)}"
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


def follow(url: str, pipeline_id: int, out: TextIO, *, interval: float = 1.0, timeout: float | None = None,
           alive: Callable[[], bool] | None = None) -> str:
    """Print changes until the pipeline reaches a final state; returns that state.

    ``alive`` (optional) is checked each round; when it returns False the follow stops with
    "aborted" (e.g. the embedded workers died).
    """
    seen: dict[int, str] = {}
    start = time.monotonic()
    while True:
        snap = snapshot(url, pipeline_id)
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
