"""The per-row crop file of the fine stage (SPEC §5 step 3): boxes, not cropped pixels.

Format 2 (``attrs["crop_format"] == 2``) keeps per second of the video ``boxes`` [T, 4] int32
(y0, x0, y1, x1, exclusive ends), ``has_box`` [T] bool (the event seconds, the only ones
cropped), ``box_source`` [T] uint8, ``box_alpha`` [T] float32 and ``audio_valid`` [T] bool, with
``attrs["features"]``: the extraction's feature file, relative to the crop file's folder. A reader
crops and resizes the frame when it reads it (:func:`crop_frames`, one small OpenCV resize per
frame, the same pixels format 1 stored), so a row costs ~200 bytes instead of a copy of its
video's frames and audio (4.4 MB for 10 s at 356 px). Format 1 files (``frames`` and ``audio``
inside) are still read. Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np

CROP_FORMAT = 2


def crop_resize(frames: np.ndarray, boxes: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """Crop each frame [T, H, W, C] to its box and resize back to ``size`` (default H×W), bilinear."""
    t, h, w = frames.shape[:3]
    oh, ow = size or (h, w)
    out = np.empty((t, oh, ow) + frames.shape[3:], dtype=frames.dtype)
    for i in range(t):  # one cv2 call per frame; the pixels are handled inside OpenCV
        y0, x0, y1, x1 = (int(v) for v in boxes[i])
        out[i] = cv2.resize(frames[i, y0:y1, x0:x1], (ow, oh), interpolation=cv2.INTER_LINEAR)
    return out


def crop_in_place(frames: np.ndarray, index: Iterable[int], boxes: np.ndarray) -> np.ndarray:
    """``frames[i]`` ← its box crop resized back to H×W, for each ``i`` of ``index`` (as :func:`crop_resize`)."""
    h, w = frames.shape[1:3]
    for i, box in zip(index, boxes, strict=True):
        y0, x0, y1, x1 = (int(v) for v in box)
        frames[i] = cv2.resize(frames[i, y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_LINEAR)
    return frames


def write_crop_file(path: Path, feature_file: Path, data: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    """Write one row's crop file (format 2) atomically; ``data``: boxes, has_box, box_source, box_alpha, audio_valid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w", libver="latest") as f:  # compact headers: most of a small file
            for k in ("boxes", "has_box", "box_source", "box_alpha", "audio_valid"):
                f[k] = data[k]
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["features"] = os.path.relpath(Path(feature_file).resolve(), path.parent.resolve())
            f.attrs["crop_format"] = CROP_FORMAT
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def is_box_file(f: h5py.File) -> bool:
    """Whether an open per-row file holds boxes (format 2) rather than pixels."""
    return int(f.attrs.get("crop_format", 1)) >= 2


def source_features(path: Path, f: h5py.File) -> Path:
    """The feature file a box file's frames and audio come from."""
    return (Path(path).parent / str(f.attrs["features"])).resolve()


def read_boxes(path: Path) -> tuple[tuple[int, int], np.ndarray]:
    """A crop file's frame size (H, W) and ``boxes`` [T, 4], whichever format it has."""
    with h5py.File(path, "r") as f:
        boxes = np.asarray(f["boxes"][()], np.int64)
        if not is_box_file(f):
            return (int(f["frames"].shape[1]), int(f["frames"].shape[2])), boxes
        features = source_features(Path(path), f)
    with h5py.File(features, "r") as g:
        return (int(g["frames"].shape[1]), int(g["frames"].shape[2])), boxes


def crop_frames(frames: np.ndarray, seconds: Iterable[int], boxes: np.ndarray, has_box: np.ndarray) -> np.ndarray:
    """Frames [n, H, W, 3] of ``seconds`` as format 1 stored them: event seconds cropped to their box."""
    secs = list(seconds)
    cropped = [j for j, s in enumerate(secs) if has_box[s]]
    if not cropped:
        return frames
    out = np.array(frames)  # never crop the caller's (or h5py's cached) array in place
    return crop_in_place(out, cropped, boxes[[secs[j] for j in cropped]])
