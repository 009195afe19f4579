"""Reading and writing saliency maps the way the MATLAB evaluation code sees them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def read_map(path: Path | str) -> np.ndarray:
    """A saliency image as float64 in [0, 1] (``im2double``); colour images give channel 1 (red)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"cannot read image {path}")
    if img.ndim == 3:
        img = img[..., 2]  # OpenCV is BGR(A): MATLAB's channel 1 is red
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(img.dtype, 1.0)
    return img.astype(np.float64) / scale


def read_fixations(path: Path | str, key: str = "eyeMap") -> np.ndarray:
    """The binary fixation map stored in a ``.mat`` file (variable ``eyeMap``) as a bool array."""
    from scipy.io import loadmat

    try:
        data = loadmat(str(path))[key]
    except NotImplementedError:  # MATLAB v7.3 files are HDF5, stored column-major
        import h5py

        with h5py.File(path, "r") as f:
            data = np.asarray(f[key][()]).T
    except KeyError as exc:
        raise OSError(f"{path} has no variable {key!r}") from exc
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise OSError(f"{path}: {key} is not a 2-D map (shape {arr.shape})")
    return arr > 0


def write_map(path: Path | str, m: np.ndarray) -> None:
    """Write a [0, 1] map as an 8-bit greyscale PNG/JPEG (values clipped)."""
    img = np.clip(np.rint(np.asarray(m, np.float64) * 255.0), 0, 255).astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write image {path}")
