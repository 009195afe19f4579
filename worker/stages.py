"""The pipeline's stages: each kind declared once, next to its body (docs/architecture.md's table).

A declaration (:meth:`StageGraph.stage`) says the kind's queue, what it waits for, the upstream
outputs its body reads (``ctx.inputs[...]``), the config sections of its input hash, fan-out,
artefact kinds, devices, whether it is optional. The graph is checked when this module loads.
Bodies only map a stage to its library call; ``sta_models`` (and so torch) is imported inside them:
the Celery parent process must never initialise CUDA before it forks its pool children.

Adding a stage kind = one ``@GRAPH.stage(...)`` body here (docs/architecture.md, "How to add a stage").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sta_models.branches import BRANCHES
from sta_models.jsonio import finite_json
from worker.stage_context import ItemJob, StageContext
from worker.stage_graph import FanOut, Queue, StageGraph

#: bump when a stage's code changes in a way that invalidates earlier outputs (reuse key)
CODE_VERSION = "1"

GRAPH = StageGraph("stages")

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

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    try:
        return finite_json(json.loads(json.dumps(obj, default=str)))
    except (TypeError, ValueError):
        return {"repr": repr(obj)[:2000]}


def _record_history(ctx: StageContext, result: Any) -> None:
    """Upsert every epoch of the run's history (the checkpoint's included): an epoch that finished
    on a worker cut off before it could write its row is recorded by the attempt that resumed."""
    from sta_models.callbacks import EpochMetrics

    for h in getattr(result, "history", None) or []:
        ctx.callbacks.on_epoch(EpochMetrics(**{k: h.get(k) for k in EpochMetrics.__dataclass_fields__}))


def _train_summary(ctx: StageContext, result: Any) -> None:
    _record_history(ctx, result)
    ctx.summary = _jsonable(getattr(result, "record", None) or {"epochs": getattr(result, "epochs_done", None)})
    if isinstance(ctx.summary, dict):
        ctx.summary.pop("history", None)


def _phase_config(config: Any, phase: str) -> dict[str, Any]:
    return dict(config.coarse if phase == "coarse" else config.fine)


# ---------------------------------------------------------------------------------------------
# extract: fan-out, one item per video


def _video(dataset_root: Path, video_id: str) -> Path:
    return dataset_root / "AVE" / f"{video_id}.mp4"


def _feature_file(job: ItemJob) -> Path:
    return job.output_dir / f"{job.key}.h5"


def _extract_one(job: ItemJob) -> None:
    from sta_models.extraction import extract_video

    extract_video(_video(job.dataset_root, job.key), _feature_file(job), size=job.config.extract.size,
                  video_id=job.key)


def _source_changed(ctx: StageContext, video_id: str, out: Path | None) -> bool:
    """Whether a succeeded item must be extracted again: its output is gone, or its video's inode
    changed (ctime: replaced, rewritten, renamed into place — touching it counts too) after the output
    was written. A false alarm costs one hash: ``extract_video`` keeps an output made from the
    same bytes (``source_sha256``)."""
    try:
        return out is None or _video(ctx.dataset_root, video_id).stat().st_ctime_ns > out.stat().st_mtime_ns
    except OSError:  # output or video missing: extract again (a missing video fails with its reason)
        return True


EXTRACT_FAN_OUT = FanOut(run=_extract_one, output=_feature_file, redo=_source_changed,
                         min_success=lambda config: config.extract.min_success_fraction,
                         unit="videos", done="extracted", report="extraction.json")


@GRAPH.stage("extract", queue=Queue.CPU, config=(("extract",),), fan_out=EXTRACT_FAN_OUT,
             artefacts={".h5": "features"}, calls="sta_models.extraction.extract_video")
def body_extract(ctx: StageContext) -> list[str]:
    """The videos to extract (one item task each; the last item finishes the stage)."""
    ds = _dataset(ctx)
    for p in ds.problems:
        ctx.callbacks.log(f"dataset problem: {p.path}:{p.line}: {p.reason}")
    ctx.callbacks.log(f"extracting at size {ctx.config.extract.size}")
    return sorted({r.video_id for r in ds.rows})


# ---------------------------------------------------------------------------------------------
# branch trainings and their CAMs, coarse then fine


def _train_branch(branch: str, phase: str, features: str) -> Any:
    def body(ctx: StageContext) -> None:
        from sta_models.training import train_branch

        feature_dir = ctx.inputs[features]
        splits = _splits(ctx, feature_dir)
        result = train_branch(branch, {"train": splits["train"], "val": splits["val"]}, feature_dir,
                              ctx.output_dir, _phase_config(ctx.config, phase)[branch], ctx.callbacks, resume=True)
        _train_summary(ctx, result)

    body.__name__ = body.__qualname__ = f"body_train_{branch}_{phase}"
    return body


def _cams(phase: str, features: str) -> Any:
    def body(ctx: StageContext) -> None:
        import dataclasses

        from sta_models.cams import compute_cams
        from worker.progress import BranchesProgress

        feature_dir = ctx.inputs[features]
        splits = _splits(ctx, feature_dir)
        rows = splits["train"] + splits["val"] + splits["test"]
        summary: dict[str, Any] = {}
        progress = BranchesProgress(ctx.callbacks.on_progress, tuple(BRANCHES))  # "… · branch 2/3 (s 9/9, sa 4/9)"
        for branch in BRANCHES:
            ctx.callbacks.check_cancel()
            cfg = _phase_config(ctx.config, phase)[branch]
            ckpt = ctx.inputs[f"train_{branch}_{phase}"] / "best.pt"
            res = compute_cams(branch, ckpt, rows, feature_dir, ctx.output_dir / branch,
                               canvas=ctx.config.extract.size, device=cfg.device,
                               callbacks=dataclasses.replace(ctx.callbacks, progress=progress.for_branch(branch)))
            summary[branch] = _jsonable(res)
        ctx.summary = summary

    body.__name__ = body.__qualname__ = f"body_cams_{phase}"
    return body


def _trainings(phase: str) -> tuple[str, ...]:
    return tuple(f"train_{b}_{phase}" for b in BRANCHES)


def _branch_devices(phase: str, branch: str) -> Callable[[Any], list[str]]:
    return lambda config: [_phase_config(config, phase)[branch].device]


def _branch_stages(phase: str, features: str, after: str) -> None:
    """``train_<branch>_<phase>`` for every branch, then ``cams_<phase>`` over them."""
    trainings = _trainings(phase)
    for b in BRANCHES:
        GRAPH.stage(f"train_{b}_{phase}", queue=Queue.GPU, depends_on=(after,), inputs=(features,),
                    config=(("split_seed",), (phase, b)),
                    devices=_branch_devices(phase, b),
                    calls="sta_models.training.train_branch")(_train_branch(b, phase, features))
    GRAPH.stage(f"cams_{phase}", queue=Queue.GPU, depends_on=trainings, inputs=(features, *trainings),
                config=(("extract", "size"),), artefacts={".h5": "cams"},
                devices=lambda config: [c.device for c in _phase_config(config, phase).values()],
                calls="sta_models.cams.compute_cams (per branch)")(_cams(phase, features))


_branch_stages("coarse", features="extract", after="extract")


def _fusion_weighting(ctx: StageContext, phase: str) -> str:
    """The fusion's branch weights: ``pseudo_gt.fusion_weighting``, ``auto`` resolved from the
    phase's training records (contrast-weighted when a branch trained from random init)."""
    from sta_models.fusion_weights import resolve_weighting

    records = [ctx.inputs[kind] / "record.json" for kind in _trainings(phase)]
    weighting = resolve_weighting(ctx.config.pseudo_gt.fusion_weighting, records)
    ctx.callbacks.log(f"{phase} fusion: {weighting}-weighted branch CAMs")
    return weighting


@GRAPH.stage("crops", queue=Queue.CPU, depends_on=("cams_coarse",),
             inputs=("extract", "cams_coarse", *_trainings("coarse")),
             config=(("pseudo_gt",),), artefacts={".h5": "crops"},
             calls="sta_models.pseudogt.coarse_boxes_and_crops")
def body_crops(ctx: StageContext) -> None:
    from sta_models.pseudogt import coarse_boxes_and_crops

    feature_dir = ctx.inputs["extract"]
    splits = _splits(ctx, feature_dir)
    cam_dirs = {b: ctx.inputs["cams_coarse"] / b for b in BRANCHES}
    res = coarse_boxes_and_crops(cam_dirs, splits["train"] + splits["val"] + splits["test"], feature_dir,
                                 ctx.output_dir, ctx.config.pseudo_gt, ctx.callbacks,
                                 weighting=_fusion_weighting(ctx, "coarse"))
    ctx.summary = _jsonable(res)


_branch_stages("fine", features="crops", after="crops")


# ---------------------------------------------------------------------------------------------
# pseudo ground truth, STA, evaluation


@GRAPH.stage("pseudo_gt", queue=Queue.CPU, depends_on=("cams_fine",),
             inputs=("crops", "cams_fine", *_trainings("fine")),
             config=(("pseudo_gt",),), artefacts={".h5": "pseudo_gt"}, calls="sta_models.pseudogt.fuse_pseudo_gt")
def body_pseudo_gt(ctx: StageContext) -> None:
    from sta_models.pseudogt import fuse_pseudo_gt

    splits = _splits(ctx, ctx.inputs["crops"])
    cam_dirs = {b: ctx.inputs["cams_fine"] / b for b in BRANCHES}
    res = fuse_pseudo_gt(cam_dirs, ctx.inputs["crops"], splits["train"] + splits["val"] + splits["test"],
                         ctx.output_dir, ctx.config.pseudo_gt, ctx.callbacks,
                         weighting=_fusion_weighting(ctx, "fine"))
    ctx.summary = _jsonable(res)
    if isinstance(ctx.summary, dict):
        ctx.summary.pop("rows", None)  # per-row detail stays in report.json


@GRAPH.stage("train_sta", queue=Queue.GPU, depends_on=("pseudo_gt",), inputs=("extract", "pseudo_gt"),
             config=(("split_seed",), ("sta",)), devices=lambda config: [config.sta.device],
             calls="sta_models.sta_training.train_sta")
def body_train_sta(ctx: StageContext) -> None:
    from sta_models.sta_training import train_sta

    feature_dir = ctx.inputs["extract"]
    splits = _splits(ctx, feature_dir)
    result = train_sta({"train": splits["train"], "val": splits["val"]}, feature_dir, ctx.inputs["pseudo_gt"],
                       ctx.output_dir, ctx.config.sta, ctx.callbacks, resume=True)
    _train_summary(ctx, result)


@GRAPH.stage("evaluate", queue=Queue.GPU, depends_on=("train_sta",),
             inputs=("extract", "cams_coarse", "crops", "cams_fine", "pseudo_gt", "train_sta"),
             config=(("split_seed",), ("evaluate",)), artefacts={".png": "prediction"},
             devices=lambda config: [config.sta.device],
             calls="sta_models.predict + sta_models.evaluation_stage.score_predictions")
def body_evaluate(ctx: StageContext) -> None:
    from worker.evaluate import evaluate_stage

    ctx.summary = evaluate_stage(ctx, _dataset(ctx))


@GRAPH.stage("benchmark", queue=Queue.GPU, depends_on=("train_sta",), inputs=("train_sta",),
             config=(("evaluate",),), optional=True,
             calls="sta_models.benchmark.run_benchmark on STAPIPE_STAVIS_ROOT (only when the pipeline page's "
                   "\"Benchmark on STAViS sets\" asks for it)")
def body_benchmark(ctx: StageContext) -> None:
    from worker.benchmark import benchmark_stage

    ctx.summary = benchmark_stage(ctx)


GRAPH.check()

#: the stage rows of every pipeline, in order
KINDS: tuple[str, ...] = GRAPH.kinds


# ---------------------------------------------------------------------------------------------
# input fingerprints


def _section(config: dict[str, Any], keys: tuple[str, ...]) -> Any:
    value: Any = config
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def dataset_fingerprint(dataset_root: str | Path) -> str:
    """Content hash of the annotation/split files plus (name, size, mtime) of every video.

    Hashing every video byte would make a submit of the real AVE (~4,000 videos) take minutes;
    size+mtime catches replaced files, which is what reuse has to notice.
    """
    root = Path(dataset_root)
    parts: list[Any] = [str(root.resolve())]
    for name in ("Annotations.txt", "trainSet.txt", "valSet.txt", "testSet.txt"):
        f = root / name
        parts.append([name, hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else None])
    videos = root / "AVE"
    if videos.is_dir():
        for f in sorted(videos.iterdir()):
            if f.is_file():
                st = f.stat()
                parts.append([f.name, st.st_size, st.st_mtime_ns])
    return _digest(parts)


def input_hashes(config: dict[str, Any], dataset_fp: str, graph: StageGraph = GRAPH) -> dict[str, str]:
    """Input hash per required stage: its config sections + the hashes of its upstream stages
    (Merkle chain) + the dataset's fingerprint for a root stage, so a stage is reusable exactly when
    its own settings and everything upstream are unchanged."""
    out: dict[str, str] = {}
    for spec in graph.required:
        payload = {
            "kind": spec.kind,
            "code": CODE_VERSION,
            "config": [_section(config, k) for k in spec.config],
            "upstream": [out[d] for d in spec.depends_on],
            "dataset": None if spec.depends_on else dataset_fp,
        }
        out[spec.kind] = _digest(payload)
    return out


__all__ = ["GRAPH", "KINDS", "CODE_VERSION", "EXTRACT_FAN_OUT", "dataset_fingerprint", "input_hashes"]
