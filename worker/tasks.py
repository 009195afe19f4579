"""Celery tasks: thin wrappers that call the ``sta_models`` contract functions.

State handling (claim, heartbeat, epochs, progress, cancel, artefacts, errors) is in
worker.stage_runner; each body below only maps a stage to its library call. ``sta_models`` (and so
torch) is imported inside the bodies: the Celery parent process must never initialise CUDA before
it forks its pool children.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import signals
from sqlalchemy import select

import worker.handback  # noqa: F401  (registers the fast-stop signals)
import worker.maintenance  # noqa: F401  (registers the recovery signals)
import worker.presence  # noqa: F401  (each worker keeps its row in the workers table)
from db.models import ExtractionItem, ItemStatus, Stage, utcnow
from db.session import dispose_engines, session_scope
from db.transient import DatabaseUnavailable, retry
from sta_models.jsonio import finite_json
from worker.celery_app import TASK_ITEM, TASK_STAGE, app
from worker.devices import check_stage_devices
from worker.faults import maybe_inject
from worker.logs import append_line
from worker.settings import get_settings
from worker.stage_runner import (
    FanOut,
    StageContext,
    claim_item,
    execute_stage,
    finish_extract_if_done,
    finish_item,
    one_line,
    relative_paths,
    sha256_file,
    update_extract_progress,
)

log = logging.getLogger(__name__)


def _host(task: Any) -> str:
    return str(getattr(task.request, "hostname", None) or socket.gethostname())


@signals.worker_process_init.connect
def _fresh_child(**_: Any) -> None:
    """Pool children must not share the parent's pooled DB connections."""
    dispose_engines()


# ---------------------------------------------------------------------------------------------
# helpers for bodies


def _dataset(ctx: StageContext) -> Any:
    from sta_models.ave import load_dataset

    return load_dataset(ctx.dataset_root, seed=ctx.config.split_seed)


def _with_features(rows: list[Any], feature_dir: Path) -> list[Any]:
    """Rows whose feature file exists (videos that failed extraction drop out here)."""
    from sta_models.datasets import feature_path

    return [r for r in rows if feature_path(feature_dir, r).exists()]


def _splits(ctx: StageContext, feature_dir: Path) -> dict[str, list[Any]]:
    ds = _dataset(ctx)
    return {name: _with_features(getattr(ds, name), feature_dir) for name in ("train", "val", "test")}


def _jsonable(obj: Any) -> Any:
    import dataclasses
    import json

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    try:
        return finite_json(json.loads(json.dumps(obj, default=str)))
    except (TypeError, ValueError):
        return {"repr": repr(obj)[:2000]}



# ---------------------------------------------------------------------------------------------
# stage bodies


def _source_changed(ctx: StageContext, item: ExtractionItem) -> bool:
    """Whether a succeeded item must be extracted again: its output is gone, or its video's inode
    changed (ctime: replaced, rewritten, renamed into place — touching it counts too) after the output
    was written. A false alarm costs one hash: ``extract_video`` keeps an output made from the
    same bytes (``source_sha256``)."""
    out = Path(item.output_path) if item.output_path else None
    video = ctx.dataset_root / "AVE" / f"{item.video_id}.mp4"
    try:
        return out is None or video.stat().st_ctime_ns > out.stat().st_mtime_ns
    except OSError:  # output or video missing: extract again (a missing video fails with its reason)
        return True


def body_extract(ctx: StageContext) -> None:
    """Fan out: one item row + one ``extract_item`` task per video; the last item finishes the stage."""
    ds = _dataset(ctx)
    for p in ds.problems:
        ctx.callbacks.log(f"dataset problem: {p.path}:{p.line}: {p.reason}")
    video_ids = sorted({r.video_id for r in ds.rows})
    with session_scope(ctx.url) as s:
        have = {i.video_id: i for i in s.scalars(select(ExtractionItem).where(ExtractionItem.stage_id == ctx.stage_id))}
        redo = 0
        for item in have.values():  # a re-run or redelivered fan-out: re-queue what is not done
            if item.status == ItemStatus.SUCCEEDED and not _source_changed(ctx, item):
                continue
            redo += item.status in (ItemStatus.SUCCEEDED, ItemStatus.FAILED)
            item.status = ItemStatus.QUEUED
            item.reason = None
            item.celery_task_id = uuid.uuid4().hex
            item.updated_at = utcnow()
        # new items are inserted already queued with their token: one batched INSERT, no UPDATEs
        new = [ExtractionItem(stage_id=ctx.stage_id, pipeline_id=ctx.pipeline_id, video_id=vid,
                              status=ItemStatus.QUEUED, celery_task_id=uuid.uuid4().hex, updated_at=utcnow())
               for vid in video_ids if vid not in have]
        s.add_all(new)
        s.flush()
        messages = [(item.id, item.celery_task_id or "") for item in [*have.values(), *new]
                    if item.status == ItemStatus.QUEUED]
        update_extract_progress(s, ctx.stage_id)
    ctx.callbacks.log(f"extracting {len(video_ids)} videos ({len(messages)} to do, {redo} of them failed before "
                      f"or changed since) at size {ctx.config.extract.size}")
    from worker.orchestration import _send_all

    _send_all(("item", item_id, "cpu", token) for item_id, token in messages)
    if not messages:
        with session_scope(ctx.url) as s:
            finish_extract_if_done(s, ctx.stage_id)
    raise FanOut()


def _record_history(ctx: StageContext, result: Any) -> None:
    """Upsert every epoch of the run's history (the checkpoint's included): an epoch that finished
    on a worker cut off before it could write its row is recorded by the attempt that resumed."""
    from sta_models.callbacks import EpochMetrics

    for h in getattr(result, "history", None) or []:
        ctx.callbacks.on_epoch(EpochMetrics(**{k: h.get(k) for k in EpochMetrics.__dataclass_fields__}))


def _branch_phase(kind: str) -> tuple[str, str]:
    _, branch, phase = kind.split("_")
    return branch, phase


def body_train_branch(ctx: StageContext) -> None:
    from sta_models.training import train_branch

    branch, phase = _branch_phase(ctx.kind)
    feature_dir = ctx.dirs["extract" if phase == "coarse" else "crops"]
    splits = _splits(ctx, feature_dir)
    cfg = (ctx.config.coarse if phase == "coarse" else ctx.config.fine)[branch]
    result = train_branch(branch, {"train": splits["train"], "val": splits["val"]}, feature_dir,
                          ctx.output_dir, cfg, ctx.callbacks, resume=True)
    _record_history(ctx, result)
    ctx.summary = _jsonable(getattr(result, "record", None) or {"epochs": getattr(result, "epochs_done", None)})
    if isinstance(ctx.summary, dict):
        ctx.summary.pop("history", None)


def _cams(ctx: StageContext, phase: str) -> None:
    from sta_models.cams import compute_cams

    feature_dir = ctx.dirs["extract" if phase == "coarse" else "crops"]
    splits = _splits(ctx, feature_dir)
    rows = splits["train"] + splits["val"] + splits["test"]
    summary: dict[str, Any] = {}
    for branch in ("s", "sa", "st"):
        ctx.callbacks.check_cancel()
        cfg = (ctx.config.coarse if phase == "coarse" else ctx.config.fine)[branch]
        ckpt = ctx.dirs[f"train_{branch}_{phase}"] / "best.pt"
        res = compute_cams(branch, ckpt, rows, feature_dir, ctx.output_dir / branch, canvas=ctx.config.extract.size,
                           device=cfg.device, callbacks=ctx.callbacks)
        summary[branch] = _jsonable(res)
    ctx.summary = summary


def body_cams_coarse(ctx: StageContext) -> None:
    _cams(ctx, "coarse")


def body_cams_fine(ctx: StageContext) -> None:
    _cams(ctx, "fine")


def _fusion_weighting(ctx: StageContext, phase: str) -> str:
    """The fusion's branch weights: ``pseudo_gt.fusion_weighting``, ``auto`` resolved from the
    phase's training records (contrast-weighted when a branch trained from random init)."""
    from sta_models.fusion_weights import resolve_weighting

    records = [d / "record.json" for b in ("s", "sa", "st") if (d := ctx.dirs.get(f"train_{b}_{phase}")) is not None]
    weighting = resolve_weighting(ctx.config.pseudo_gt.fusion_weighting, records)
    ctx.callbacks.log(f"{phase} fusion: {weighting}-weighted branch CAMs")
    return weighting


def body_crops(ctx: StageContext) -> None:
    from sta_models.pseudogt import coarse_boxes_and_crops

    feature_dir = ctx.dirs["extract"]
    splits = _splits(ctx, feature_dir)
    cam_dirs = {b: ctx.dirs["cams_coarse"] / b for b in ("s", "sa", "st")}
    res = coarse_boxes_and_crops(cam_dirs, splits["train"] + splits["val"] + splits["test"], feature_dir,
                                 ctx.output_dir, ctx.config.pseudo_gt, ctx.callbacks,
                                 weighting=_fusion_weighting(ctx, "coarse"))
    ctx.summary = _jsonable(res)


def body_pseudo_gt(ctx: StageContext) -> None:
    from sta_models.pseudogt import fuse_pseudo_gt

    splits = _splits(ctx, ctx.dirs["crops"])
    cam_dirs = {b: ctx.dirs["cams_fine"] / b for b in ("s", "sa", "st")}
    res = fuse_pseudo_gt(cam_dirs, ctx.dirs["crops"], splits["train"] + splits["val"] + splits["test"],
                         ctx.output_dir, ctx.config.pseudo_gt, ctx.callbacks,
                         weighting=_fusion_weighting(ctx, "fine"))
    ctx.summary = _jsonable(res)
    if isinstance(ctx.summary, dict):
        ctx.summary.pop("rows", None)  # per-row detail stays in report.json


def body_train_sta(ctx: StageContext) -> None:
    from sta_models.sta_training import train_sta

    feature_dir = ctx.dirs["extract"]
    splits = _splits(ctx, feature_dir)
    result = train_sta({"train": splits["train"], "val": splits["val"]}, feature_dir, ctx.dirs["pseudo_gt"],
                       ctx.output_dir, ctx.config.sta, ctx.callbacks, resume=True)
    _record_history(ctx, result)
    ctx.summary = _jsonable(getattr(result, "record", None) or {"epochs": getattr(result, "epochs_done", None)})
    if isinstance(ctx.summary, dict):
        ctx.summary.pop("history", None)


def body_evaluate(ctx: StageContext) -> None:
    from worker.evaluate import evaluate_stage

    ctx.summary = evaluate_stage(ctx, _dataset(ctx))


def body_benchmark(ctx: StageContext) -> None:
    from worker.benchmark import benchmark_stage

    ctx.summary = benchmark_stage(ctx)


BODIES: dict[str, Callable[[StageContext], None]] = {
    "extract": body_extract,
    **{f"train_{b}_{p}": body_train_branch for b in ("s", "sa", "st") for p in ("coarse", "fine")},
    "cams_coarse": body_cams_coarse,
    "crops": body_crops,
    "cams_fine": body_cams_fine,
    "pseudo_gt": body_pseudo_gt,
    "train_sta": body_train_sta,
    "evaluate": body_evaluate,
    "benchmark": body_benchmark,
}


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
# Celery tasks


@app.task(name=TASK_STAGE, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_stage(self: Any, stage_id: int) -> str:
    """Run one stage; the message's task id is the stage's claim token."""
    settings = get_settings()

    def read_kind() -> str | None:
        with session_scope(settings.db_url) as s:
            return s.scalar(select(Stage.kind).where(Stage.id == stage_id))

    try:
        kind = retry(read_kind, f"reading stage {stage_id}", settings.db_outage_s)
        if kind is None:
            return "dropped"
        return execute_stage(settings.db_url, stage_id, self.request.id, _host(self), settings.max_attempts,
                             BODIES[kind], before=_before, outage_s=settings.db_outage_s)
    except DatabaseUnavailable as exc:  # not claimed yet: the same message (same token) comes back later
        log.warning("stage %s: %s; message re-sent", stage_id, exc)
        raise self.retry(countdown=settings.recovery_interval_s, max_retries=None) from exc


@app.task(name=TASK_ITEM, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def extract_item(self: Any, item_id: int) -> str:
    """Extract one video of an extract stage; the last item to finish finishes the stage.

    Two short transactions per video (see docs/decisions.md, "Extraction items"): the claim
    (conditional UPDATE … RETURNING + one SELECT of the stage) and the result (item row, artefact
    upsert and the stage's progress counters); the stage-level "all done?" check with COUNT(*)
    runs only when the counters say this was the last item.
    """
    url = get_settings().db_url
    with session_scope(url) as s:
        job = claim_item(s, item_id, self.request.id, _host(self))
    if job is None:
        return "dropped"
    t0 = time.perf_counter()
    status, reason, artefact = ItemStatus.SUCCEEDED, None, None
    if job.skip:
        status, reason = ItemStatus.FAILED, "cancelled"
    else:
        try:
            maybe_inject(f"extract:{job.video_id}", 1, None)
            from sta_models.extraction import extract_video

            extract_video(job.video, job.out, size=job.size, video_id=job.video_id)
        except Exception as exc:  # every failure is a per-video reason; the stage decides later
            status, reason = ItemStatus.FAILED, (relative_paths(str(exc)).strip().splitlines() or [one_line(exc)])[0][:500]
    seconds = time.perf_counter() - t0
    if status == ItemStatus.SUCCEEDED and not job.skip:
        try:  # hashed here, outside the result transaction (no lock held while reading the file)
            artefact = (job.out.stat().st_size, sha256_file(job.out))
        except OSError as exc:
            status, reason = ItemStatus.FAILED, one_line(exc)
    with session_scope(url) as s:
        recorded, maybe_last = finish_item(s, job, status, reason, seconds, artefact)
    if job.log_path:
        line = f"{job.video_id}: {'ok' if reason is None else 'FAILED ' + reason} ({seconds:.1f} s)"
        append_line(job.log_path, line if recorded else f"{line}; superseded by a newer attempt, not recorded")
    if maybe_last:
        with session_scope(url) as s:
            finish_extract_if_done(s, job.stage_id)
    return str(status) if recorded else "superseded"


__all__ = ["run_stage", "extract_item", "BODIES"]
