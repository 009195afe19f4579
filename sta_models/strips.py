"""Per-video strips for the Results page: frame | ground truth | STA | centre bias, one row per second.

One JPEG sprite sheet per video (rows = seconds, panels side by side) instead of a file per
second and panel: the page shows one row at a time under a slider, and a test split of ~400 AVE
videos stays ~400 small files. Maps are drawn as a heat map over the frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import h5py
import numpy as np

from sta_models import evaluation_result as R
from sta_models.evaluation import centre_bias_map
from sta_models.imageio_utils import read_map

PANELS = ["frame", "ground truth", "STA", "centre bias"]
PANEL_HEIGHT = 128


def _heat(frame_bgr: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    """``m`` (any size, any range) min-max normalised, coloured and blended over the frame; grey when None."""
    h, w = frame_bgr.shape[:2]
    if m is None:
        out = np.full_like(frame_bgr, 64)
        cv2.putText(out, "none", (8, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (200, 200, 200), 1, cv2.LINE_AA)
        return out
    m = cv2.resize(np.asarray(m, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    lo, hi = float(m.min()), float(m.max())
    m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    colour = cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(frame_bgr, 0.45, colour, 0.55, 0)


def write_strip(
    video: str,
    frames_rgb: np.ndarray,
    gt: Mapping[int, Path],
    predictions: Mapping[int, Path],
    out_dir: Path,
    panel_height: int = PANEL_HEIGHT,
) -> R.Strip:
    """Write ``out_dir/strips/<video>.jpg`` for seconds 0…T−1 of ``frames_rgb`` [T, H, W, 3].

    ``gt`` and ``predictions`` map 1-based frame numbers (second + 1) to files.
    """
    t, h, w = frames_rgb.shape[:3]
    ph, pw = panel_height, max(1, round(w * panel_height / h))
    sheet = np.zeros((t * ph, len(PANELS) * pw, 3), np.uint8)
    centre = centre_bias_map(ph, pw)
    for s in range(t):
        frame = cv2.resize(cv2.cvtColor(frames_rgb[s], cv2.COLOR_RGB2BGR), (pw, ph), interpolation=cv2.INTER_AREA)
        gt_map = read_map(gt[s + 1]) if s + 1 in gt else None
        pred = read_map(predictions[s + 1]) if s + 1 in predictions else None
        for k, panel in enumerate((frame, _heat(frame, gt_map), _heat(frame, pred), _heat(frame, centre))):
            sheet[s * ph:(s + 1) * ph, k * pw:(k + 1) * pw] = panel
    rel = f"strips/{video}.jpg"
    path = Path(out_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet, [cv2.IMWRITE_JPEG_QUALITY, 85]):
        raise OSError(f"could not write {path}")
    return R.Strip(video=video, file=rel, seconds=list(range(t)), panels=list(PANELS), panel_height=ph,
                   panel_width=pw)


def write_strips(
    videos: list[str],
    feature_dir: Path,
    gt: Mapping[str, Mapping[int, tuple[Path, Path]]],
    predictions: Mapping[str, Mapping[int, Path]],
    out_dir: Path,
) -> list[R.Strip]:
    """A strip for every video of ``videos`` that has a feature file (``feature_dir/<video>.h5``)."""
    out = []
    for video in videos:
        feat = Path(feature_dir) / f"{video}.h5"
        if not feat.is_file():
            continue
        with h5py.File(feat, "r") as f:
            frames = f["frames"][()]
        maps = {n: pair[0] for n, pair in gt.get(video, {}).items()}
        out.append(write_strip(video, frames, maps, predictions.get(video, {}), out_dir))
    return out
