"""Scoring predicted saliency folders with the STAViS protocol (SPEC §7, reference §1.1).

Per frame: the prediction is post-processed like STAViS ``postprocessMap`` (min-max, Gaussian blur
σ = 2 px with a ``2·ceil(3σ)+1`` kernel and symmetric borders) and resized to the GT size; CC, SIM
and KLD are scored against the continuous map, NSS, AUC-Judd (jittered, seeded), AUC-Borji and
s-AUC against the binary fixation map. s-AUC negatives are the fixations of all GT frames of the
same video minus the current frame's fixated pixels. NaN frames are dropped per metric and
counted; means go frame → video → dataset (unweighted over videos), as ``compute_all_*.m``.
"""

from __future__ import annotations

import csv
import io
import math
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sta_models import evaluation_result as R
from sta_models import metric_table as T
from sta_models import metrics as M
from sta_models.callbacks import NO_CALLBACKS, Callbacks
from sta_models.config import EvaluateConfig
from sta_models.imageio_utils import read_fixations, read_map

METRICS = T.NAMES  # cc, nss, sim, kld, auc_j, auc_b, sauc (sta_models.metric_table)
LOWER_IS_BETTER = T.LOWER_IS_BETTER
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_NUM = re.compile(r"(\d+)$")

Predictor = Callable[[str, int, tuple[int, int]], "np.ndarray | None"]
"""(video, 1-based frame number, GT (height, width)) → a 2-D map, or None when it has none."""


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def _frame_number(path: Path) -> int | None:
    m = _NUM.search(path.stem)
    return int(m.group(1)) if m else None


def list_ground_truth(gt_dir: Path | str) -> dict[str, dict[int, tuple[Path, Path]]]:
    """``video → frame → (maps/eyeMap_N.jpg, fixMap_N.mat)`` for frames that have both files."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"ground-truth folder not found: {gt_dir}")
    out: dict[str, dict[int, tuple[Path, Path]]] = {}
    for vdir in sorted(p for p in gt_dir.iterdir() if p.is_dir()):
        maps = {_frame_number(p): p for p in (vdir / "maps").glob("eyeMap_*") if p.suffix.lower() in IMAGE_SUFFIXES}
        fixes = {_frame_number(p): p for p in vdir.glob("fixMap_*.mat")}
        frames = {n: (maps[n], fixes[n]) for n in sorted(k for k in set(maps) & set(fixes) if k is not None)}
        if frames:
            out[vdir.name] = frames
    return out


def list_predictions(pred_dir: Path | str) -> dict[str, dict[int, Path]]:
    """``video → frame → image`` for ``<video>/<N>.png|jpg`` or ``<video>/eyeMap_<N>.*`` (or ``maps/``)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {pred_dir}")
    out: dict[str, dict[int, Path]] = {}
    for vdir in sorted(p for p in pred_dir.iterdir() if p.is_dir()):
        files = [p for p in vdir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files and (vdir / "maps").is_dir():  # a STAViS-layout folder used as predictions
            files = [p for p in (vdir / "maps").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        frames = {n: p for p in sorted(files) if (n := _frame_number(p)) is not None}
        if frames:
            out[vdir.name] = frames
    return out


@dataclass
class Coverage:
    """Which GT frames a prediction folder covers, checked before anything is scored or written."""

    gt_videos: list[str]
    scored_videos: list[str]  # GT videos with a prediction folder
    missing: dict[str, list[int]]  # GT frames with no prediction file, per scored video
    unpredicted: list[str]  # GT videos with no prediction folder
    gt_frames: int

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unpredicted

    def reason(self) -> str:
        """One line: how the predictions fall short (empty when they cover every GT frame)."""
        parts = []
        if self.missing:
            n = sum(len(v) for v in self.missing.values())
            first = next(iter(self.missing))
            parts.append(f"{n} of {self.gt_frames} GT frames have no prediction (first: {first} "
                         f"{_ranges(self.missing[first][:20])})")
        if self.unpredicted:
            parts.append(f"{len(self.unpredicted)} GT video(s) have no prediction folder "
                         f"({', '.join(self.unpredicted[:5])})")
        return "; ".join(parts)


def check_coverage(pred_dir: Path | str, gt_dir: Path | str) -> Coverage:
    """Match prediction files to GT frames by number; raises ``FileNotFoundError`` (one line) when
    ``gt_dir`` holds no STAViS GT or no prediction folder matches a GT video."""
    gt = list_ground_truth(gt_dir)
    if not gt:
        raise FileNotFoundError(f"no STAViS ground truth in {gt_dir} (expected <video>/maps/eyeMap_NNNNN.jpg "
                                "and <video>/fixMap_NNNNN.mat)")
    preds = list_predictions(pred_dir)
    scored = sorted(set(preds) & set(gt))
    if not scored:
        raise FileNotFoundError(f"no prediction folder in {pred_dir} matches a GT video of {gt_dir} "
                                f"(GT videos: {', '.join(sorted(gt)[:5])})")
    missing = {v: sorted(set(gt[v]) - set(preds[v])) for v in scored}
    return Coverage(gt_videos=sorted(gt), scored_videos=scored, missing={v: m for v, m in missing.items() if m},
                    unpredicted=sorted(set(gt) - set(preds)), gt_frames=sum(len(f) for f in gt.values()))


# ------------------------------------------------------------------------------------------------
# Maps
# ------------------------------------------------------------------------------------------------


def postprocess_prediction(pred: np.ndarray, sigma: float = 2.0) -> np.ndarray | None:
    """STAViS ``postprocessMap(I, σ)``: clip to [0, 1], min-max, Gaussian blur. None if constant."""
    import cv2

    m = np.clip(np.asarray(pred, dtype=np.float64), 0.0, None)
    if m.ndim != 2:
        raise ValueError(f"a prediction must be a 2-D map, got shape {m.shape}")
    hi = m.max()
    m = np.minimum(m / hi, 1.0) if hi > 0 else m  # the ×255, clip, ×255/max steps
    lo, hi = m.min(), m.max()
    if not hi > lo:
        return None
    m = (m - lo) / (hi - lo)
    if sigma > 0:
        k = 2 * math.ceil(3 * sigma) + 1
        m = cv2.GaussianBlur(m, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    return m


def centre_bias_map(h: int, w: int, sigma_frac: float = 0.25) -> np.ndarray:
    """A centred Gaussian (σ = ``sigma_frac`` of each side), max 1: the classic centre-bias baseline."""
    y = (np.arange(h) - (h - 1) / 2) / (sigma_frac * h)
    x = (np.arange(w) - (w - 1) / 2) / (sigma_frac * w)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


def score_frame(
    pred: np.ndarray | None,
    gt_map: np.ndarray,
    fix: np.ndarray,
    other: np.ndarray,
    cfg: EvaluateConfig,
    rng: np.random.Generator,
) -> dict[str, float]:
    """Every metric of the table of one post-processed prediction (None = constant map → all NaN).

    In table order: the random metrics draw from ``rng`` one after the other."""
    if pred is None:
        return dict.fromkeys(METRICS, math.nan)
    s = M.resize_map(pred, gt_map.shape)
    return {name: score_metric(metric, s, gt_map, fix, other, cfg, rng) for name, metric in T.METRICS.items()}


def score_metric(
    metric: T.Metric,
    s: np.ndarray,
    gt_map: np.ndarray,
    fix: np.ndarray,
    other: np.ndarray | None = None,
    cfg: EvaluateConfig | None = None,
    rng: np.random.Generator | None = None,
) -> float:
    """One metric of map ``s`` as its table entry says to call it (``other``: s-AUC's negatives)."""
    args: list[Any] = [s, gt_map if metric.needs == "map" else fix]
    if metric.other_frames:
        if other is None:
            raise ValueError(f"{metric.name} needs the other frames' fixations")
        args.append(other)
    kwargs: dict[str, Any] = dict(metric.options)
    if metric.splits:
        cfg = cfg or EvaluateConfig()
        kwargs.update(n_splits=cfg.n_splits, step=cfg.step)
    if metric.random:
        kwargs["rng"] = rng
    fn = getattr(M, metric.function) if isinstance(metric.function, str) else metric.function
    return float(fn(*args, **kwargs))


# ------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------


@dataclass
class VideoResult:
    video: str
    frames: int  # frames scored (a prediction and GT both present)
    missing: list[int]  # GT frame numbers with no prediction
    nan: dict[str, int]  # frames dropped per metric
    nan_frames: int  # frames with at least one NaN metric
    scores: dict[str, float]  # per-video mean over non-NaN frames

    @property
    def frames_scored(self) -> int:
        return self.frames

    @property
    def frames_missing(self) -> int:
        return len(self.missing)

    @property
    def frames_nan(self) -> int:
        return self.nan_frames


@dataclass
class EvaluationReport:
    """Per-video and dataset scores of one method, with everything that was dropped or missing."""

    name: str
    protocol: str
    videos: list[VideoResult]
    unpredicted_videos: list[str] = field(default_factory=list)  # GT videos with no prediction at all
    unmatched_videos: list[str] = field(default_factory=list)  # prediction folders with no GT
    extra_frames: int = 0  # predicted frames with no GT frame

    @property
    def frames(self) -> int:
        return sum(v.frames for v in self.videos)

    @property
    def missing_frames(self) -> int:
        return sum(len(v.missing) for v in self.videos)

    @property
    def nan_counts(self) -> dict[str, int]:
        return {m: sum(v.nan[m] for v in self.videos) for m in METRICS}

    @property
    def nan_frames(self) -> int:
        return sum(v.nan_frames for v in self.videos)

    @property
    def dataset(self) -> dict[str, float]:
        """Unweighted mean over videos of the per-video means (videos with no valid frame skipped)."""
        out = {}
        for m in METRICS:
            vals = [v.scores[m] for v in self.videos if not math.isnan(v.scores[m])]
            out[m] = float(np.mean(vals)) if vals else math.nan
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "protocol": self.protocol,
            "dataset": _json_floats(self.dataset),
            "frames": self.frames,
            "videos_scored": sum(v.frames > 0 for v in self.videos),
            "nan_counts": self.nan_counts,
            "nan_frames": self.nan_frames,
            "missing_frames": self.missing_frames,
            "missing": {v.video: v.missing for v in self.videos if v.missing},
            "unpredicted_videos": self.unpredicted_videos,
            "unmatched_videos": self.unmatched_videos,
            "extra_frames": self.extra_frames,
            "videos": [
                {"video": v.video, "frames": v.frames, "missing": len(v.missing), "nan": v.nan,
                 "nan_frames": v.nan_frames, "frames_scored": v.frames_scored, "frames_missing": v.frames_missing,
                 "frames_nan": v.frames_nan, "scores": _json_floats(v.scores)}
                for v in self.videos
            ],
        }

    def csv_rows(self) -> list[dict[str, Any]]:
        rows = [
            {"method": self.name, "video": v.video, "frames": v.frames, "missing": len(v.missing),
             "nan_frames": v.nan_frames, **{m: _fmt(v.scores[m]) for m in METRICS}}
            for v in self.videos
        ]
        rows.append({"method": self.name, "video": "ALL", "frames": self.frames, "missing": self.missing_frames,
                     "nan_frames": self.nan_frames, **{m: _fmt(self.dataset[m]) for m in METRICS}})
        return rows

    def write_json(self, path: Path | str) -> Path:
        written, _ = write_reports([self], json_path=path)
        assert written is not None  # a json_path always gives a file
        return written

    def write_csv(self, path: Path | str) -> Path:
        _, written = write_reports([self], csv_path=path)
        assert written is not None  # a csv_path always gives a file
        return written

    def format_table(self, per_video: bool = True) -> str:
        return format_table([self], per_video=per_video)

    def problems(self) -> list[str]:
        """Human-readable lines about what was not scored."""
        out = []
        if self.missing_frames:
            detail = ", ".join(f"{v.video}: {_ranges(v.missing)}" for v in self.videos if v.missing)
            out.append(f"{self.missing_frames} GT frame(s) have no prediction file ({detail})")
        if self.unpredicted_videos:
            out.append(f"{len(self.unpredicted_videos)} GT video(s) have no prediction folder and were not "
                       f"scored: {', '.join(self.unpredicted_videos[:10])}")
        if self.unmatched_videos:
            out.append(f"{len(self.unmatched_videos)} prediction folder(s) have no GT: "
                       f"{', '.join(self.unmatched_videos[:10])}")
        if self.nan_frames:
            counts = ", ".join(f"{m} {n}" for m, n in self.nan_counts.items() if n)
            out.append(f"{self.nan_frames} frame(s) had an undefined metric and were dropped ({counts})")
        return out


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4f}"


def _json_floats(d: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if math.isnan(v) else round(float(v), 6)) for k, v in d.items()}


def _ranges(nums: Sequence[int]) -> str:
    parts, start = [], None
    for i, n in enumerate(nums):
        if start is None:
            start = n
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            parts.append(f"{start}" if start == n else f"{start}-{n}")
            start = None
    return "frames " + ",".join(parts)


def method_result(report: EvaluationReport) -> R.MethodResult:
    """The schema's dataset row of one method."""
    return R.MethodResult(
        method=report.name, label=R.METHOD_LABELS.get(report.name, report.name),
        values=_json_floats(report.dataset), frames_scored=report.frames, frames_missing=report.missing_frames,
        frames_nan=report.nan_frames, videos_scored=sum(v.frames > 0 for v in report.videos),
        nan_counts=report.nan_counts, unpredicted_videos=report.unpredicted_videos,
        unmatched_videos=report.unmatched_videos, extra_frames=report.extra_frames,
    )


def video_results(report: EvaluationReport) -> list[R.VideoResult]:
    """The schema's per-video rows of one method."""
    return [R.VideoResult(video=v.video, method=report.name, values=_json_floats(v.scores), frames_scored=v.frames,
                          frames_missing=len(v.missing), frames_nan=v.nan_frames) for v in report.videos]


def build_result(
    reports: Sequence[EvaluationReport],
    config: EvaluateConfig | None = None,
    ablation: R.Ablation | None = None,
    strips: Sequence[R.Strip] = (),
) -> R.EvaluationResult:
    """The evaluate stage's result (``metrics.json``, :mod:`sta_models.evaluation_result`)."""
    return R.EvaluationResult(
        dataset=[method_result(r) for r in reports],
        videos=[v for r in reports for v in video_results(r)],
        metrics=list(METRICS), protocol=reports[0].protocol if reports else "stavis",
        config=(config or EvaluateConfig()).model_dump(), ablation=ablation, strips=list(strips),
    )


def write_reports(
    reports: Sequence[EvaluationReport],
    json_path: Path | str | None = None,
    csv_path: Path | str | None = None,
    config: EvaluateConfig | None = None,
    ablation: R.Ablation | None = None,
    strips: Sequence[R.Strip] = (),
) -> tuple[Path | None, Path | None]:
    """``metrics.json`` (:func:`build_result`) and one CSV (a row per method × video, plus ``ALL``)."""
    jp = cp = None
    if json_path is not None:
        jp = R.write_evaluation(json_path, build_result(reports, config, ablation, strips))
    if csv_path is not None:
        cp = Path(csv_path)
        cp.parent.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["method", "video", "frames", "missing", "nan_frames", *METRICS])
        writer.writeheader()
        for r in reports:
            writer.writerows(r.csv_rows())
        cp.write_text(buf.getvalue())
    return jp, cp


def format_table(reports: Sequence[EvaluationReport], per_video: bool = True) -> str:
    """A fixed-width text table: per-video rows (optional) and one ``ALL`` row per method."""
    head = f"{'method':<12} {'video':<24} {'frames':>6} " + " ".join(f"{m:>7}" for m in METRICS)
    lines = [head, "-" * len(head)]
    for r in reports:
        rows = r.csv_rows() if per_video else r.csv_rows()[-1:]
        for row in rows:
            lines.append(f"{row['method'][:12]:<12} {row['video'][:24]:<24} {row['frames']:>6} "
                         + " ".join(f"{row[m]:>7}" for m in METRICS))
    lines.append(f"({T.direction_note(METRICS, labels=False)})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


def evaluate_predictor(
    predictor: Predictor,
    gt_dir: Path | str,
    *,
    videos: Iterable[str] | None = None,
    name: str = "prediction",
    cfg: EvaluateConfig | None = None,
    callbacks: Callbacks | None = None,
) -> EvaluationReport:
    """Score ``predictor`` on every GT frame of ``videos`` (default: all GT videos)."""
    cfg = cfg or EvaluateConfig()
    cb = callbacks or NO_CALLBACKS
    gt = list_ground_truth(gt_dir)
    chosen = sorted(gt) if videos is None else [v for v in videos if v in gt]
    total = sum(len(gt[v]) for v in chosen)
    done = 0
    results = []
    for video in chosen:
        cb.check_cancel()
        frames = gt[video]
        fixes = {n: read_fixations(fp) for n, (_, fp) in frames.items()}
        union = np.logical_or.reduce([f for f in fixes.values()]) if _same_shapes(fixes) else None
        per_frame: list[dict[str, float]] = []
        missing: list[int] = []
        for n, (map_path, _) in frames.items():
            done += 1
            gt_map = read_map(map_path)
            raw = predictor(video, n, gt_map.shape)
            if raw is None:
                missing.append(n)
                continue
            fix = fixes[n]
            other = (union if union is not None else fix) & ~fix
            rng = np.random.default_rng([cfg.seed, zlib.crc32(video.encode()), n])
            pred = postprocess_prediction(raw, cfg.blur_sigma)
            per_frame.append(score_frame(pred, gt_map, fix, other, cfg, rng))
            cb.on_progress(done, total, f"evaluate {name}")
        results.append(_video_result(video, per_frame, missing))
    return EvaluationReport(name=name, protocol="stavis", videos=results)


def _same_shapes(fixes: dict[int, np.ndarray]) -> bool:
    return len({f.shape for f in fixes.values()}) == 1


def _video_result(video: str, per_frame: list[dict[str, float]], missing: list[int]) -> VideoResult:
    arr = np.array([[f[m] for m in METRICS] for f in per_frame], dtype=np.float64).reshape(-1, len(METRICS))
    nan = np.isnan(arr)
    scores = {}
    for j, m in enumerate(METRICS):
        valid = arr[~nan[:, j], j]
        scores[m] = float(valid.mean()) if len(valid) else math.nan
    return VideoResult(
        video=video, frames=len(per_frame), missing=missing,
        nan={m: int(nan[:, j].sum()) for j, m in enumerate(METRICS)},
        nan_frames=int(nan.any(axis=1).sum()), scores=scores,
    )


def evaluate_folder(
    pred_dir: Path | str,
    gt_dir: Path | str,
    *,
    cfg: EvaluateConfig | None = None,
    callbacks: Callbacks | None = None,
    name: str = "prediction",
) -> EvaluationReport:
    """Score ``pred_dir/<video>/<N>.png|jpg`` against STAViS-layout GT in ``gt_dir/<video>/``.

    Videos with a prediction folder and GT are scored; GT frames without a prediction file are
    reported per video (``missing``), as are GT videos with no prediction folder and prediction
    folders with no GT.
    """
    preds = list_predictions(pred_dir)
    gt = list_ground_truth(gt_dir)

    def predictor(video: str, n: int, shape: tuple[int, int]) -> np.ndarray | None:
        path = preds[video].get(n)
        return None if path is None else read_map(path)

    report = evaluate_predictor(predictor, gt_dir, videos=sorted(set(preds) & set(gt)), name=name,
                                cfg=cfg, callbacks=callbacks)
    report.unpredicted_videos = sorted(set(gt) - set(preds))
    report.unmatched_videos = sorted(set(preds) - set(gt))
    report.extra_frames = sum(len(set(preds[v]) - set(gt[v])) for v in set(preds) & set(gt))
    return report


def evaluate_baseline(
    gt_dir: Path | str,
    kind: str = "centre",
    *,
    videos: Iterable[str] | None = None,
    sigma_frac: float = 0.25,
    cfg: EvaluateConfig | None = None,
    callbacks: Callbacks | None = None,
) -> EvaluationReport:
    """Score a baseline on the same GT: ``centre`` = :func:`centre_bias_map` at the GT size."""
    if kind != "centre":
        raise ValueError(f"unknown baseline {kind!r} (only 'centre')")
    return evaluate_predictor(lambda _v, _n, shape: centre_bias_map(*shape, sigma_frac=sigma_frac),
                              gt_dir, videos=videos, name=kind, cfg=cfg, callbacks=callbacks)
