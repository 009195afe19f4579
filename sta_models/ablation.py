"""The paper's ablation on a dataset with true saliency: every intermediate map against the truth.

Scored with the STAViS protocol's post-processing and CC, NSS and SIM (the paper's ablation
metrics) on one frame set, the event seconds of the given rows that have a pseudo-GT, so the rows
compare like with like: each registered branch's CAMs (S, SA, ST; coarse on the frame, fine pasted back at the crop box), the coarse
and the fine fusion (SPEC §5's probability-weighted fusion, before smoothing and sparsification),
the pseudo-GT, STA's predictions and the centre-bias baseline. A method without a map for a frame
of the set (ST on a short event, SA without audio) counts it as missing.

CAMs are read only through :func:`sta_models.cam_files.read_cam_file`, whatever their stored
resolution; maps are resized to the ground truth's size by the protocol.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from sta_models import evaluation_result as R
from sta_models import metric_table as T
from sta_models import metrics as M
from sta_models.branches import BRANCHES
from sta_models.callbacks import NO_CALLBACKS, Callbacks
from sta_models.cam_files import read_cam_file
from sta_models.config import EvaluateConfig
from sta_models.crop_files import read_boxes
from sta_models.evaluation import (
    centre_bias_map,
    list_ground_truth,
    list_predictions,
    postprocess_prediction,
    score_metric,
)
from sta_models.fusion_weights import PROBABILITY, branch_weight
from sta_models.imageio_utils import read_fixations, read_map
from sta_models.pseudogt import RowLike, fuse_frame, paste_map, to_float32

ABLATION_METRICS = ["cc", "nss", "sim"]  # the paper's ablation columns, entries of sta_models.metric_table


@dataclass(frozen=True)
class AblationInputs:
    """The pipeline's folders the ablation reads."""

    cams_coarse: Path  # <branch>/<row key>.h5
    crops: Path  # <row key>.h5 (boxes, frames)
    cams_fine: Path  # <branch>/<row key>.h5
    pseudo_gt: Path  # <row key>.h5 (maps, seconds)
    predictions: Path | None = None  # STA: <video>/<frame>.png
    weighting_coarse: str = PROBABILITY  # the fusions' branch weights, as the crops stage used them
    weighting_fine: str = PROBABILITY  # ... and the pseudo-GT stage (``recorded_weighting``)


def recorded_weighting(summary_json: Path) -> str:
    """The ``fusion_weighting`` a crops (``crops.json``) or pseudo-GT (``report.json``) stage
    recorded; SPEC §5's ``probability`` for outputs written before the choice existed."""
    try:
        return str(json.loads(Path(summary_json).read_text()).get("fusion_weighting") or PROBABILITY)
    except (OSError, ValueError):
        return PROBABILITY


def methods() -> list[tuple[str, str, str]]:
    """(method, label, group) of every ablation row, in table order."""
    out = []
    for phase in ("coarse", "fine"):
        out += [(f"cam_{b}_{phase}", f"CAM {spec.label} ({phase})", f"{phase} CAMs") for b, spec in BRANCHES.items()]
        out.append((f"fusion_{phase}", f"fusion ({phase})", f"{phase} CAMs"))
    return [*out, ("pseudo_gt", "pseudo-GT", "pseudo-GT"), ("sta", "STA", "STA"),
            ("centre", "centre bias", "baseline")]


def _read_pgt(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        return np.asarray(f["seconds"][()], np.int64), f["maps"][()]


def _fuse(maps: Sequence[np.ndarray], weights: Sequence[float], shape: tuple[int, int]) -> np.ndarray | None:
    if not maps or not any(w > 0 for w in weights):
        return None
    return fuse_frame(list(maps), list(weights), np.empty(shape, np.float32))


def row_maps(row: RowLike, inputs: AblationInputs) -> dict[int, dict[str, np.ndarray]]:
    """``second → method → map`` for the row's seconds with a pseudo-GT (no STA/centre: those are per frame)."""
    pgt = _read_pgt(Path(inputs.pseudo_gt) / f"{row.key}.h5")
    crop = Path(inputs.crops) / f"{row.key}.h5"
    if pgt is None or not crop.exists():
        return {}
    size, boxes = read_boxes(crop)
    files = {(phase, b): read_cam_file(Path(d) / b / f"{row.key}.h5")
             for phase, d in (("coarse", inputs.cams_coarse), ("fine", inputs.cams_fine)) for b in BRANCHES}
    out: dict[int, dict[str, np.ndarray]] = {}
    for second, gt_map in zip(*pgt, strict=True):
        s = int(second)
        maps: dict[str, np.ndarray] = {"pseudo_gt": to_float32(gt_map).copy()}
        for phase in ("coarse", "fine"):
            got: list[tuple[np.ndarray, bool, float]] = []
            weighting = inputs.weighting_coarse if phase == "coarse" else inputs.weighting_fine
            for b in BRANCHES:
                c = files[(phase, b)]
                if c is None:
                    continue
                hit = np.flatnonzero(c.seconds == s)
                if not len(hit):
                    continue
                i = int(hit[0])
                cam = to_float32(c.cams[i]).copy()
                if phase == "fine":  # the crop's CAM back at its box in the frame (weighted before, as the stage)
                    weight = branch_weight(float(c.true_prob[i]), cam, weighting)
                    cam = paste_map(cam, boxes[s], np.empty(size, np.float32)).copy()
                else:
                    cam = _resize(cam, size)
                    weight = branch_weight(float(c.true_prob[i]), cam, weighting)
                maps[f"cam_{b}_{phase}"] = cam
                got.append((cam, int(c.pred_class[i]) == int(row.category_id) and c.true_prob[i] > 0, weight))
            selected = [(m, w) for m, sel, w in got if sel]
            if selected:
                fused = _fuse([m for m, _ in selected], [p for _, p in selected], size)
            elif phase == "coarse":  # no branch selected it: the pipeline boxes on the plain average
                fused = _fuse([m for m, _, _ in got], [1.0] * len(got), size)
            else:
                fused = None
            if fused is not None:
                maps[f"fusion_{phase}"] = fused
        out[s] = maps
    return out


def _resize(m: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    if m.shape == tuple(size):
        return m
    import cv2

    return cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def _score(raw: np.ndarray, gt_map: np.ndarray, fix: np.ndarray, sigma: float) -> dict[str, float]:
    """CC, NSS and SIM of one map with the STAViS post-processing (NaN for a constant map)."""
    pred = postprocess_prediction(raw, sigma)
    if pred is None:
        return dict.fromkeys(ABLATION_METRICS, math.nan)
    s = M.resize_map(pred, gt_map.shape)
    return {m: score_metric(T.METRICS[m], s, gt_map, fix) for m in ABLATION_METRICS}


def _mean(vals: list[float]) -> float:
    ok = [v for v in vals if not math.isnan(v)]
    return float(np.mean(ok)) if ok else math.nan


def run_ablation(
    rows: Sequence[RowLike],
    gt_dir: Path | str,
    inputs: AblationInputs,
    *,
    cfg: EvaluateConfig | None = None,
    callbacks: Callbacks | None = None,
) -> R.Ablation | None:
    """The ablation table of ``rows`` (the test split), or None when no row has a pseudo-GT and GT.

    GT frame N is second N − 1 (the STAViS layout numbers from 1). Video by video, so memory holds
    one video's maps; only CC, NSS and SIM (the paper's ablation metrics), the AUCs would cost
    most of the time. Means go frame → video → dataset, NaN frames dropped, as the main table.
    """
    cfg = cfg or EvaluateConfig()
    cb = callbacks or NO_CALLBACKS
    gt = list_ground_truth(gt_dir)
    by_video: dict[str, list[RowLike]] = {}
    for r in rows:
        if r.video_id in gt:
            by_video.setdefault(r.video_id, []).append(r)
    preds = list_predictions(inputs.predictions) if inputs.predictions and Path(inputs.predictions).is_dir() else {}
    table = methods()
    # method -> per-video means of each metric; method -> frames scored
    video_means: dict[str, list[dict[str, float]]] = {m: [] for m, _, _ in table}
    scored = dict.fromkeys(video_means, 0)
    n_frames = n_videos = 0
    for done, (video, video_rows) in enumerate(sorted(by_video.items())):
        cb.check_cancel()
        per_second: dict[int, dict[str, np.ndarray]] = {}
        for r in video_rows:
            per_second.update(row_maps(r, inputs))
        frames = {s + 1: m for s, m in sorted(per_second.items()) if s + 1 in gt[video]}
        if not frames:
            continue
        n_videos += 1
        n_frames += len(frames)
        per_frame: dict[str, list[dict[str, float]]] = {m: [] for m in video_means}
        for n, maps in frames.items():
            map_path, fix_path = gt[video][n]
            gt_map, fix = read_map(map_path), read_fixations(fix_path)
            sta = preds.get(video, {}).get(n)
            maps = {**maps, "centre": centre_bias_map(*gt_map.shape)}
            if sta is not None:
                maps["sta"] = read_map(sta)
            for method in per_frame:
                if method in maps:
                    per_frame[method].append(_score(maps[method], gt_map, fix, cfg.blur_sigma))
        for method, scores in per_frame.items():
            scored[method] += len(scores)
            if scores:
                video_means[method].append({m: _mean([f[m] for f in scores]) for m in ABLATION_METRICS})
        cb.on_progress(done + 1, len(by_video), "ablation")
    if not n_frames:
        return None
    out = R.Ablation(metrics=list(ABLATION_METRICS),
                     frames=f"{n_frames} frames of {n_videos} test videos: the event seconds with a pseudo-GT")
    for method, label, group in table:
        values = {m: _mean([v[m] for v in video_means[method]]) for m in ABLATION_METRICS}
        out.rows.append(R.AblationRow(
            method=method, label=label, group=group,
            values={m: (None if math.isnan(v) else round(v, 6)) for m, v in values.items()},
            frames_scored=scored[method], frames_missing=n_frames - scored[method]))
    return out


def format_ablation(ablation: R.Ablation) -> str:
    """The ablation as a fixed-width text table (``stapipe demo``'s output, the stage log)."""
    cols = ablation.metrics
    head = f"{'ablation':<20}" + "".join(f"{R.METRIC_LABELS.get(m, m):>8}" for m in cols) + f"{'frames':>8}"
    lines = [head, "-" * len(head)]
    for r in ablation.rows:
        cells = "".join(f"{v:>8.3f}" if (v := r.values.get(m)) is not None else f"{'-':>8}" for m in cols)
        lines.append(f"{r.label:<20}{cells}{r.frames_scored:>8}")
    lines.append(f"({ablation.frames})")
    return "\n".join(lines)
