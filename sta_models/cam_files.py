"""The per-row CAM file (SPEC §4): written by ``sta_models.cams``, read by ``sta_models.pseudogt``.

Format 2 (``attrs["cam_format"] == 2``) keeps each event second's true-class CAM at the size the
network produces it (the class-map grid, e.g. 8×8 for 256 px input), divided by the maximum the
map has once upsampled to the canvas (+1e-8) and stored as float16 in ``cams_native`` [n, h, w];
``cam_scale`` [n] float32 is that divisor. :func:`read_cam_file` upsamples bilinearly
(half-pixel centres, torch's ``align_corners=False``) to ``attrs["canvas"]``: since the upsampling
is linear, dividing before it equals dividing after it, so the maps read back are the maps format
1 stored (the canvas-size maps in ``cams``) up to float16 rounding, from ~1/2000 of the bytes.
Both formats are read. Also ``seconds`` [n] int32, ``pred_class`` [n] int16, ``pred_prob`` and
``true_prob`` [n] float32. Torch-free, so tools that only read or write the files do not import it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np

CAM_FORMAT = 2
EPS = 1e-8  # added to the maximum before dividing (SPEC §4)


@dataclass
class CamFile:
    """One row's CAMs as read back."""

    cams: np.ndarray  # [n, c, c] at the canvas size: float16, or float32 when read so (format 2)
    seconds: np.ndarray  # [n] int64
    pred_class: np.ndarray  # [n] int64
    true_prob: np.ndarray  # [n] float32


def upsample(m: np.ndarray, canvas: int, out: np.ndarray | None = None) -> np.ndarray:
    """One 2-D float32 map bilinearly resized to canvas × canvas (OpenCV's half-pixel bilinear)."""
    if m.shape == (canvas, canvas):
        if out is None:
            return m.copy()
        np.copyto(out, m)
        return out
    return cv2.resize(m, (canvas, canvas), dst=out, interpolation=cv2.INTER_LINEAR)


def normalise_native(maps: np.ndarray, canvas: int) -> tuple[np.ndarray, np.ndarray]:
    """Native true-class maps [n, h, w] (≥ 0) → (maps / (max of upsampled map + 1e-8), divisors).

    The divisor comes from the canvas-size map, as SPEC §4 normalises, so the upsampled stored map
    peaks at 1.
    """
    m = np.ascontiguousarray(maps, np.float32)
    buf = np.empty((canvas, canvas), np.float32)
    scale = np.array([float(upsample(x, canvas, buf).max()) + EPS for x in m], np.float32).reshape(-1)
    return m / scale.reshape(-1, 1, 1) if len(m) else m, scale


def write_cam_file(path: Path, data: Mapping[str, Sequence[Any]], attrs: Mapping[str, Any]) -> None:
    """Write one row's CAM file (format 2) atomically.

    ``data``: ``cams`` (the true-class maps at the network's class-map size, ≥ 0, not yet
    normalised), seconds, pred_class, pred_prob, true_prob; ``attrs`` must hold ``canvas``.
    Size: 2 bytes × h·w per second (8×8: 128 B) instead of 2 × canvas² (356²: 253 kB).
    """
    path = Path(path)
    canvas = int(attrs["canvas"])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = np.stack([np.asarray(c, np.float32) for c in data["cams"]]) if len(data["cams"]) else np.zeros((0, 0, 0))
    native, scale = normalise_native(raw, canvas)
    try:
        with h5py.File(tmp, "w", libver="latest") as f:  # compact headers: most of a small file
            f["cams_native"] = native.astype(np.float16)
            f["cam_scale"] = scale
            f["seconds"] = np.asarray(data["seconds"], dtype=np.int32)
            f["pred_class"] = np.asarray(data["pred_class"], dtype=np.int16)
            f["pred_prob"] = np.asarray(data["pred_prob"], dtype=np.float32)
            f["true_prob"] = np.asarray(data["true_prob"], dtype=np.float32)
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["cam_format"] = CAM_FORMAT
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def canvas_maps(native: np.ndarray, canvas: int, out: np.ndarray) -> np.ndarray:
    """Stored native maps [n, h, w] float16 → ``out`` [n, canvas, canvas] (float16 or float32), upsampled.

    Into float32 the resize writes straight into ``out``: the float32 → float16 conversion costs
    ~4× the resize itself (0.3 vs 0.08 ms per 356² map here).
    """
    src = cv2.multiply(np.ascontiguousarray(native).reshape(-1, native.shape[-1]), 1.0,  # type: ignore[call-overload]  # OpenCV stubs lack the scalar src2 form
                       dtype=cv2.CV_32F).reshape(native.shape) if native.size else native.astype(np.float32)
    direct = out.dtype == np.float32
    buf = None if direct else np.empty((canvas, canvas), np.float32)
    for i, m in enumerate(src):
        if direct:
            upsample(m, canvas, out[i])
        else:  # float16 through OpenCV: round to nearest even like numpy's cast, faster
            cv2.multiply(upsample(m, canvas, buf), 1.0, dst=out[i], dtype=cv2.CV_16F)  # type: ignore[call-overload]  # OpenCV stubs lack the scalar src2 form
    return out


def read_cam_file(path: Path, alloc: Callable[[tuple[int, ...], Any], np.ndarray] | None = None,
                  dtype: Any = np.float16) -> CamFile | None:
    """The CAM file at ``path`` (either format) with its maps at the canvas size, or None when there is none.

    ``alloc(shape, dtype)`` may supply the array the maps are read into (C-contiguous, exactly
    ``shape`` and ``dtype``): callers reading many files reuse one buffer per branch instead of a
    fresh array. ``dtype`` float32 skips rounding format 2's upsampled maps to float16; format 1
    files are float16 on disk and come back as float16 whatever ``dtype`` says.
    """
    path = Path(path)
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        if "cams_native" in f:
            native = f["cams_native"][()]
            canvas = int(f.attrs["canvas"])
            shape = (len(native), canvas, canvas)
            out = alloc(shape, np.dtype(dtype)) if alloc is not None and len(native) else np.empty(shape, dtype)
            cams = canvas_maps(native, canvas, out)
        else:  # format 1: canvas-size maps as stored
            ds = f["cams"]
            if alloc is not None and ds.dtype == np.float16 and ds.size:
                cams = alloc(ds.shape, np.dtype(np.float16))
                ds.read_direct(cams)
            else:
                cams = ds[()]
        return CamFile(
            cams=cams,
            seconds=np.asarray(f["seconds"][()], dtype=np.int64),
            pred_class=np.asarray(f["pred_class"][()], dtype=np.int64),
            true_prob=np.asarray(f["true_prob"][()], dtype=np.float32),
        )
