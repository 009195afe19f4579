"""The per-row CAM file (SPEC §4): written by ``sta_models.cams``, read by ``sta_models.pseudogt``.

``cams`` [n, c, c] float16 (the event seconds' maps at the canvas size), ``seconds`` [n] int32,
``pred_class`` [n] int16, ``pred_prob`` and ``true_prob`` [n] float32, plus attributes. Torch-free,
so tools that only read or write the files do not import it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np


@dataclass
class CamFile:
    """One row's CAMs as read back."""

    cams: np.ndarray  # [n, c, c] float16
    seconds: np.ndarray  # [n] int64
    pred_class: np.ndarray  # [n] int64
    true_prob: np.ndarray  # [n] float32


def write_cam_file(path: Path, data: Mapping[str, Sequence[Any]], attrs: Mapping[str, Any]) -> None:
    """Write one row's CAM file atomically (keys of ``data``: cams, seconds, pred_class, pred_prob, true_prob).

    Uncompressed, one chunk per second: the pseudo-GT stages read every map of the file, and lzf
    (which saved 20–80 % of the bytes on CAM-like maps) cost 4–5 ms of decompression per
    10-second file, more than fusing its maps. Size: 2 bytes × c² per second (c = 356: 253 kB).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    cams = np.asarray(np.stack(data["cams"]) if len(data["cams"]) else np.zeros((0, 0, 0)), np.float16)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("cams", data=cams, chunks=(1, *cams.shape[1:]) if cams.size else None)
            f["seconds"] = np.asarray(data["seconds"], dtype=np.int32)
            f["pred_class"] = np.asarray(data["pred_class"], dtype=np.int16)
            f["pred_prob"] = np.asarray(data["pred_prob"], dtype=np.float32)
            f["true_prob"] = np.asarray(data["true_prob"], dtype=np.float32)
            for k, v in attrs.items():
                f.attrs[k] = v
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_cam_file(path: Path, alloc: Callable[[tuple[int, ...]], np.ndarray] | None = None) -> CamFile | None:
    """The CAM file at ``path``, or None when there is none.

    ``alloc(shape)`` may supply the float16 array the maps are read into (C-contiguous, exactly
    ``shape``): callers reading many files reuse one buffer per branch instead of a fresh array.
    """
    path = Path(path)
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        ds = f["cams"]
        if alloc is not None and ds.dtype == np.float16 and ds.size:
            cams = alloc(ds.shape)
            ds.read_direct(cams)
        else:
            cams = ds[()]
        return CamFile(
            cams=cams,
            seconds=np.asarray(f["seconds"][()], dtype=np.int64),
            pred_class=np.asarray(f["pred_class"][()], dtype=np.int64),
            true_prob=np.asarray(f["true_prob"][()], dtype=np.float32),
        )
