"""Pseudo ground truth from class activation maps, coarse → fine → fusion (SPEC §5).

Each step is a vectorised function over arrays (tested on hand-built maps); the two stage
functions at the bottom only read and write HDF5 files around them. Boxes are ``y0, x0, y1, x1``
in frame pixels with exclusive ends (``frame[y0:y1, x0:x1]``).

Choices the SPEC leaves open (also in the crop files and ``report.json``):
- If no α > 0 gives a box of at least ``min_box``, the box at the smallest α tried is grown
  symmetrically around its centre to ``min_box`` (clamped to the frame); an all-zero map gives
  the full frame. This keeps the object's location instead of discarding it.
- An event second that no coarse branch selected still needs a crop for the fine stage: its box
  comes from the plain (unweighted) average of the coarse CAMs that exist for it, or the full
  frame when none exists. ``box_source`` records which (see ``BOX_SOURCES``).
- Temporal smoothing averages each map with the maps of the neighbouring seconds that have a
  pseudo-GT (a truncated window at the event's edges and gaps).
- Sparsification zeroes pixels below ``min(factor·mean, max)``, so the peak always survives
  and a pseudo-GT map is never all zero.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import h5py
import numpy as np

from sta_models.branches import BRANCHES
from sta_models.callbacks import NO_CALLBACKS, Callbacks
from sta_models.cam_files import CamFile, read_cam_file
from sta_models.config import PseudoGTConfig
from sta_models.crop_files import crop_frames, is_box_file, source_features, write_crop_file
from sta_models.fusion_weights import PROBABILITY, branch_weight
from sta_models.jsonio import write_json_atomic

BOX_SOURCES = {0: "not in event", 1: "fused selected branches", 2: "average of unselected CAMs", 3: "full frame"}
PREVIEWS_PER_ROW = 3
PREVIEW_ROWS = 32  # rows per stage that get previews: a sample to look at, not 3 PNGs for each of 4,143 rows


class RowLike(Protocol):
    """What the stages need from ``sta_models.ave.AnnotationRow``."""

    @property
    def key(self) -> str: ...
    @property
    def video_id(self) -> str: ...
    @property
    def category_id(self) -> int: ...
    @property
    def seconds(self) -> range: ...


# ---------------------------------------------------------------------------------------------
# Array steps
# ---------------------------------------------------------------------------------------------


def to_float32(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a`` as float32; float16 goes through OpenCV (bit-exact, ~10× faster than numpy's cast).

    Without ``out`` this returns ``a`` itself when it is already float32 (like ``np.asarray``);
    ``out`` (a C-contiguous float32 array of ``a``'s shape) receives the values instead.
    """
    a = np.asarray(a)
    if a.dtype != np.float16 or a.size == 0 or a.ndim == 0:
        if out is None:
            return np.asarray(a, np.float32)
        np.copyto(out, a, casting="unsafe")
        return out
    flat = np.ascontiguousarray(a).reshape(-1, a.shape[-1])  # 2-D: one channel for OpenCV
    if out is None or not (out.flags.c_contiguous and out.dtype == np.float32 and out.shape == a.shape):
        res = cv2.multiply(flat, 1.0, dtype=cv2.CV_32F).reshape(a.shape)  # type: ignore[call-overload]  # OpenCV stubs lack the scalar src2 form
        if out is None:
            return res
        np.copyto(out, res, casting="unsafe")
        return out
    dst = out.reshape(flat.shape)  # a view: OpenCV writes into it
    if cv2.multiply(flat, 1.0, dst=dst, dtype=cv2.CV_32F) is not dst:  # type: ignore[call-overload]  # pragma: no cover - defensive; OpenCV stubs lack the scalar src2 form
        raise RuntimeError("OpenCV did not write into the given buffer")
    return out


def to_float16(a: np.ndarray) -> np.ndarray:
    """float32 → float16 through OpenCV: round to nearest even like numpy's cast (bit-exact), faster."""
    a = np.asarray(a)
    if a.dtype != np.float32 or a.size == 0 or a.ndim == 0:
        return np.asarray(a, np.float16)
    flat = np.ascontiguousarray(a).reshape(-1, a.shape[-1])
    return cv2.multiply(flat, 1.0, dtype=cv2.CV_16F).reshape(a.shape)  # type: ignore[call-overload]  # OpenCV stubs lack the scalar src2 form


def minmax(maps: np.ndarray) -> np.ndarray:
    """Min-max normalise each map over its last two axes to [0, 1] (float32); constant maps → 0."""
    m = to_float32(maps)
    if np.may_share_memory(m, maps) or not m.flags.c_contiguous:
        m = m.copy()  # never normalise the caller's array in place
    for frame in _frames(m):
        _normalise(frame)
    return m


def _frames(m: np.ndarray) -> np.ndarray:
    """A C-contiguous [..., H, W] array as an [N, H, W] view, for per-map loops that write in place."""
    if not m.flags.c_contiguous:
        raise ValueError("per-map loops need a C-contiguous array")
    return m.reshape((-1,) + m.shape[-2:])


def _normalise(frame: np.ndarray) -> np.ndarray:
    """One 2-D float32 map min-max normalised in place, (x − lo)·(1/span); constant → 0.

    Not ``cv2.normalize``: its x·scale + shift loses up to 1e-4 to cancellation and never maps
    the minimum to exactly 0.
    """
    lo, hi = (np.float32(v) for v in cv2.minMaxLoc(frame)[:2])
    if hi > lo:
        np.subtract(frame, lo, out=frame)
        np.multiply(frame, np.float32(1.0) / (hi - lo), out=frame)
    else:
        frame.fill(0.0)
    return frame


def fuse_frame(maps: Sequence[np.ndarray], weights: Sequence[float], out: np.ndarray) -> np.ndarray:
    """SPEC §5's fusion of one frame's branch maps (2-D float32) into ``out``; all-zero weights → 0.

    F = minmax((Σ p_b·M_b + ε) / (Σ p_b + ε)) with M_b = (C_b − lo_b) / span_b. The final min-max
    removes every positive affine change of its input, so the ε terms, the denominator and the
    offsets lo_b all cancel: F = minmax(Σ (p_b / span_b)·C_b). One weighted sum and one min-max
    instead of min-max-normalising each branch map first (same result up to float rounding).
    """
    terms = []
    for m, p in zip(maps, weights, strict=True):
        if p > 0:
            lo, hi = cv2.minMaxLoc(m)[:2]
            if hi > lo:  # a constant map min-max normalises to 0: no contribution
                terms.append((m, float(p) / (hi - lo)))
    if not terms:
        out.fill(0.0)
        return out
    if len(terms) == 1:
        np.copyto(out, terms[0][0])
    else:
        (m0, a0), (m1, a1) = terms[:2]
        cv2.addWeighted(m0, a0, m1, a1, 0.0, dst=out)
        for m, a in terms[2:]:
            cv2.scaleAdd(m, a, out, dst=out)
    return _normalise(out)


def fuse_maps(maps: np.ndarray, probs: np.ndarray, selected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probability-weighted fusion over the branches that selected each frame (:func:`fuse_frame`).

    ``maps`` [B, ..., H, W] (any float dtype), ``probs`` and ``selected`` [B, ...]. Returns
    (F [..., H, W] float32, has [...]); frames no branch selected get has=False and an all-zero F.
    """
    maps = np.asarray(maps)
    sel = np.asarray(selected, bool)
    w = np.where(sel, np.asarray(probs, np.float32), np.float32(0.0)).reshape(len(maps), -1)
    src = maps.reshape(len(maps), -1, *maps.shape[-2:])
    out = np.empty(src.shape[1:], np.float32)
    buf = np.empty((len(maps),) + maps.shape[-2:], np.float32)
    for i in range(src.shape[1]):
        use = [b for b in range(len(maps)) if w[b, i] > 0]
        fuse_frame([to_float32(src[b, i], out=buf[b]) for b in use], [w[b, i] for b in use], out[i])
    return out.reshape(maps.shape[1:]), np.asarray(sel.any(axis=0))


@dataclass
class MapProfile:
    """What the box search needs from maps [..., H, W]: mean, per-row and per-column maxima."""

    mean: np.ndarray  # [...] float64
    row_max: np.ndarray  # [..., H]
    col_max: np.ndarray  # [..., W]

    @classmethod
    def of(cls, maps: np.ndarray) -> MapProfile:
        f = np.ascontiguousarray(maps, dtype=np.float32)
        mean = np.array([cv2.mean(m)[0] for m in _frames(f)], np.float64).reshape(f.shape[:-2])
        return cls(mean, f.max(axis=-1), f.max(axis=-2))

    @classmethod
    def empty(cls, n: int, h: int, w: int) -> MapProfile:
        return cls(np.zeros(n), np.zeros((n, h), np.float32), np.zeros((n, w), np.float32))

    def set(self, i: int, m: np.ndarray) -> None:
        """Fill entry ``i`` from the 2-D map ``m`` (while it is still in cache)."""
        self.mean[i] = cv2.mean(m)[0]
        m.max(axis=1, out=self.row_max[i])
        m.max(axis=0, out=self.col_max[i])


def box_from_map(
    fused: np.ndarray, alpha_start: float = 2.0, alpha_step: float = 0.05, min_box: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Box of F > α·mean(F), α lowered from ``alpha_start`` until the box is ≥ ``min_box`` both ways.

    Works on [..., H, W]; returns (boxes [..., 4] int32 y0,x0,y1,x1, alpha [...] float32; NaN
    alpha = the fallback of the module docstring). See :func:`box_from_profile`.
    """
    return box_from_profile(MapProfile.of(fused), alpha_start, alpha_step, min_box)


def box_from_profile(
    p: MapProfile, alpha_start: float = 2.0, alpha_step: float = 0.05, min_box: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`box_from_map` from a :class:`MapProfile`: every α is tried at once.

    The mask only grows as α falls, so per-row and per-column maxima against every threshold
    decide it.
    """
    h, w = p.row_max.shape[-1], p.col_max.shape[-1]
    n_alpha = int(np.floor(alpha_start / alpha_step + 1e-9))
    alphas = alpha_start - alpha_step * np.arange(n_alpha + 1, dtype=np.float64)
    alphas = alphas[alphas > 1e-9]  # α = 0 would box every non-zero pixel
    need_h, need_w = min(min_box, h), min(min_box, w)
    thr = alphas * np.asarray(p.mean, np.float64)[..., None]  # [..., K]
    rows_in = p.row_max[..., None, :] > thr[..., None]  # [..., K, H]
    cols_in = p.col_max[..., None, :] > thr[..., None]  # [..., K, W]
    y0, y1 = _first_last(rows_in)
    x0, x1 = _first_last(cols_in)
    ok = ((y1 - y0) >= need_h) & ((x1 - x0) >= need_w)  # [..., K]
    found = ok.any(axis=-1)
    k = np.where(found, ok.argmax(axis=-1), len(alphas) - 1)[..., None]
    pick = lambda a: np.take_along_axis(a, k, axis=-1)[..., 0]  # noqa: E731
    boxes = np.stack([pick(y0), pick(x0), pick(y1), pick(x1)], axis=-1)
    alpha = np.where(found, alphas.astype(np.float32)[k[..., 0]], np.nan).astype(np.float32)
    boxes = np.where(found[..., None], boxes, _grow(boxes, need_h, need_w, h, w))
    return boxes.astype(np.int32), alpha


def _first_last(inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First index and one-past-last index of True along the last axis (0, 0 when none)."""
    n = inside.shape[-1]
    anyin = inside.any(axis=-1)
    first = inside.argmax(axis=-1)
    last = n - inside[..., ::-1].argmax(axis=-1)
    return np.where(anyin, first, 0), np.where(anyin, last, 0)


def _grow(boxes: np.ndarray, need_h: int, need_w: int, h: int, w: int) -> np.ndarray:
    """Grow boxes around their centre to at least need_h × need_w inside the frame; empty → full."""
    b = boxes.astype(np.int64)
    empty = (b[..., 2] <= b[..., 0]) | (b[..., 3] <= b[..., 1])
    out = []
    for lo, hi, need, size in ((b[..., 0], b[..., 2], need_h, h), (b[..., 1], b[..., 3], need_w, w)):
        length = np.maximum(hi - lo, need)
        start = np.clip((lo + hi) // 2 - length // 2, 0, size - length)
        out.append((start, start + length))
    grown = np.stack([out[0][0], out[1][0], out[0][1], out[1][1]], axis=-1)
    full = np.array([0, 0, h, w], dtype=np.int64)
    return np.where(empty[..., None], full, grown)


def smooth_boxes(boxes: np.ndarray, in_event: np.ndarray) -> np.ndarray:
    """Average each event box with those of seconds t−1, t+1; neighbours outside the event → box t.

    ``boxes`` [T, 4], ``in_event`` [T] bool. Boxes outside the event are returned unchanged.
    """
    b = np.asarray(boxes, dtype=np.float64)
    ev = np.asarray(in_event, bool)
    prev_ok = np.r_[False, ev[:-1]] & ev
    next_ok = np.r_[ev[1:], False] & ev
    prev = np.where(prev_ok[:, None], np.roll(b, 1, axis=0), b)
    nxt = np.where(next_ok[:, None], np.roll(b, -1, axis=0), b)
    smoothed = np.rint((prev + b + nxt) / 3.0)
    return np.where(ev[:, None], smoothed, b).astype(np.int32)


def paste_map(cam: np.ndarray, box: Sequence[int], out: np.ndarray) -> np.ndarray:
    """The 2-D map ``cam`` resized to ``box`` inside ``out`` (float32, zeroed first)."""
    out.fill(0.0)
    y0, x0, y1, x1 = (int(v) for v in box)
    if y1 > y0 and x1 > x0:
        cv2.resize(cam, (x1 - x0, y1 - y0), dst=out[y0:y1, x0:x1], interpolation=cv2.INTER_LINEAR)
    return out


def paste_maps(cams: np.ndarray, boxes: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """Resize each map [n, h, w] to its box and paste it into a zero canvas [n, H, W] (float32)."""
    out = np.empty((len(cams),) + tuple(canvas), dtype=np.float32)
    for i, (cam, box) in enumerate(zip(cams, boxes, strict=True)):
        paste_map(to_float32(cam), box, out[i])
    return out


def temporal_neighbours(seconds: Sequence[int] | np.ndarray, window: int = 3) -> list[np.ndarray]:
    """For each second, the (sorted) indices of the seconds within its centred window, itself included."""
    secs = np.asarray(seconds, dtype=np.int64)
    half = max(window, 1) // 2
    lo = np.searchsorted(secs, secs - half, side="left")
    hi = np.searchsorted(secs, secs + half, side="right")
    return [np.arange(a, b) for a, b in zip(lo, hi, strict=True)]


def _window_sum(maps: np.ndarray, index: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Σ maps[index] into the 2-D ``out``, added in index order."""
    if len(index) == 1:
        np.copyto(out, maps[index[0]])
        return out
    cv2.add(maps[index[0]], maps[index[1]], dst=out)
    for j in index[2:]:
        cv2.add(out, maps[j], dst=out)
    return out


def temporal_smooth(maps: np.ndarray, seconds: Sequence[int], window: int = 3) -> np.ndarray:
    """Centred moving average in time over the seconds that have a map (truncated at gaps/edges).

    ``seconds`` must be increasing (the event's seconds in order).
    """
    m = np.ascontiguousarray(maps, dtype=np.float32)
    out = np.empty_like(m)
    for i, nbrs in enumerate(temporal_neighbours(seconds, window)):
        _window_sum(m, nbrs, out[i])
        if len(nbrs) > 1:
            out[i] /= np.float32(len(nbrs))
    return out


def sparsify(maps: np.ndarray, factor: float = 3.0) -> np.ndarray:
    """Min-max each map, then zero the pixels below min(factor·mean, max) (the peak survives)."""
    m = minmax(maps)
    for frame in _frames(m):
        _sparsify_normalised(frame, factor)
    return m


def _sparsify_normalised(m: np.ndarray, factor: float) -> np.ndarray:
    """Zero, in place, the pixels of a min-max normalised 2-D map below min(factor·mean, max)."""
    hi = cv2.minMaxLoc(m)[1]
    thr = np.float32(min(factor * cv2.mean(m)[0], hi))
    # THRESH_TOZERO keeps src > thresh; the next float below thr makes that src ≥ thr
    cv2.threshold(m, float(np.nextafter(thr, np.float32(-np.inf))), 0.0, cv2.THRESH_TOZERO, dst=m)
    return m


# ---------------------------------------------------------------------------------------------
# File helpers
# ---------------------------------------------------------------------------------------------


class _Scratch:
    """Buffers reused from row to row: a fresh [n, H, W] array per row costs ~1 page fault per
    4–16 kB on first touch (glibc maps allocations this size anew each time)."""

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, key: str, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        """The buffer ``key`` of this shape and dtype, contents left over from its last use."""
        buf = self._bufs.get(key)
        if buf is None or buf.shape != shape or buf.dtype != np.dtype(dtype):
            buf = self._bufs[key] = np.empty(shape, dtype)
        return buf

    def leading(self, key: str, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        """Like :meth:`get`, but a view of a buffer that may hold more along the first axis."""
        buf = self._bufs.get(key)
        if buf is None or len(buf) < shape[0] or buf.shape[1:] != shape[1:] or buf.dtype != np.dtype(dtype):
            buf = self._bufs[key] = np.empty(shape, dtype)
        return buf[: shape[0]]


@dataclass
class _Gathered:
    """The branches' per-second metadata for one row; ``index[b][j]`` = row in branch b's file or -1."""

    names: list[str]
    loaded: dict[str, CamFile | None]
    index: np.ndarray  # [B, n] int
    probs: np.ndarray  # [B, n]
    selected: np.ndarray  # [B, n] bool
    available: np.ndarray  # [B, n] bool

    def cam(self, b: int, j: int, scratch: _Scratch) -> np.ndarray:
        """Branch ``b``'s CAM of event second ``j`` as float32, in ``scratch``'s buffer for ``b``."""
        c = self.loaded[self.names[b]]
        if c is None or self.index[b, j] < 0:
            raise KeyError(f"branch {self.names[b]} has no CAM for event second {j}")
        src = c.cams[self.index[b, j]]
        if src.dtype == np.float32:  # format 2, upsampled into the row's buffer: used as it is
            return src
        return to_float32(src, out=scratch.get(f"cam{b}", src.shape))

    def map_at(self, b: int, j: int, size: tuple[int, int], scratch: _Scratch) -> np.ndarray:
        """:meth:`cam` resized to the frame ``size`` when the CAM canvas differs from it."""
        m = self.cam(b, j, scratch)
        if m.shape == tuple(size):
            return m
        return cv2.resize(m, (size[1], size[0]), dst=scratch.get(f"map{b}", tuple(size)),
                          interpolation=cv2.INTER_LINEAR)

    def pasted(self, b: int, j: int, box: Sequence[int], size: tuple[int, int], scratch: _Scratch) -> np.ndarray:
        """:meth:`cam` resized to ``box`` in a zero canvas of the frame ``size`` (fine CAMs)."""
        return paste_map(self.cam(b, j, scratch), box, scratch.get(f"paste{b}", tuple(size)))


def _gather(cam_dirs: Mapping[str, Path], row: RowLike, seconds: np.ndarray,
            scratch: _Scratch | None = None) -> _Gathered:
    """Read the row's CAM file of every branch (into ``scratch``'s per-branch buffers when given)."""
    names = sorted(cam_dirs)
    shape = (len(names), len(seconds))
    g = _Gathered(names, {}, np.full(shape, -1, np.int64), np.zeros(shape, np.float32),
                  np.zeros(shape, bool), np.zeros(shape, bool))
    for b, name in enumerate(names):
        alloc = None if scratch is None else (lambda shp, dt, b=b: scratch.leading(f"file{b}", shp, dt))
        c = g.loaded[name] = read_cam_file(Path(cam_dirs[name]) / f"{row.key}.h5", alloc, np.float32)
        if c is None:
            continue
        pos = {int(s): i for i, s in enumerate(c.seconds)}
        g.index[b] = [pos.get(int(s), -1) for s in seconds]
        js = np.flatnonzero(g.index[b] >= 0)
        idx = g.index[b, js]
        g.probs[b, js] = c.true_prob[idx]
        g.selected[b, js] = c.pred_class[idx] == row.category_id
        g.available[b, js] = True
    return g


def _write_h5_atomic(path: Path, write: Callable[[h5py.File], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _event_seconds(row: RowLike, t: int) -> np.ndarray:
    return np.array([s for s in row.seconds if 0 <= s < t], dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Stage 1: coarse boxes and crops
# ---------------------------------------------------------------------------------------------


def _coarse_boxes(g: _Gathered, size: tuple[int, int], cfg: PseudoGTConfig,
                  scratch: _Scratch, weighting: str = PROBABILITY) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes [n, 4], α [n] and box source [n] of one row's event seconds (steps 1 of SPEC §5).

    Frame by frame, so a frame's CAMs are converted, fused and profiled while in cache.
    ``weighting`` (``sta_models.fusion_weights``) applies to the selecting branches only.
    """
    has = np.asarray(g.selected.any(axis=0))
    any_avail = g.available.any(axis=0)
    # selecting branches weighted by probability; a second no branch selected: plain average
    weights = np.where(has, np.where(g.selected, g.probs, 0.0), g.available).astype(np.float32)
    prof = MapProfile.empty(len(has), *size)
    fused = scratch.get("fused", tuple(size))
    for j in range(len(has)):
        use = np.flatnonzero(weights[:, j] > 0)
        maps = [g.map_at(int(b), j, size, scratch) for b in use]
        w = weights[use, j]
        if has[j] and weighting != PROBABILITY:
            w = np.array([branch_weight(p, m, weighting) for p, m in zip(w, maps, strict=True)], np.float32)
        fuse_frame(maps, w, fused)
        prof.set(j, fused)
    boxes, alpha = box_from_profile(prof, cfg.alpha_start, cfg.alpha_step, cfg.min_box)
    source = np.where(has, 1, np.where(any_avail, 2, 3)).astype(np.uint8)
    boxes[source == 3] = (0, 0, *size)
    alpha[source == 3] = np.nan
    return boxes, alpha, source


def _crop_preview(frame: np.ndarray, box: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """The frame with its box drawn, next to the crop the fine stage trains on (BGR uint8)."""
    y0, x0, y1, x1 = (int(v) for v in box)
    left = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    cv2.rectangle(left, (x0, y0), (max(x1 - 1, x0), max(y1 - 1, y0)), (255, 255, 255), 2)
    return cv2.hconcat([left, cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)])


def _crop_row(row: RowLike, cam_dirs: Mapping[str, Path], feature_dir: Path, out_dir: Path,
              cfg: PseudoGTConfig, scratch: _Scratch, preview: bool = True,
              weighting: str = PROBABILITY) -> dict[str, Any] | None:
    """Write one row's crop file (boxes) and previews; its summary, or None when its feature file is missing."""
    feat = Path(feature_dir) / f"{row.video_id}.h5"
    if not feat.exists():
        return None
    with h5py.File(feat, "r") as f:
        t, h, w = f["frames"].shape[:3]
        audio_valid = f["audio_valid"][()]
        attrs = dict(f.attrs)
        secs = _event_seconds(row, t)
        step = max(1, len(secs) // PREVIEWS_PER_ROW)
        shown = [int(s) for s in secs[::step][:PREVIEWS_PER_ROW]] if preview else []
        frames = np.stack([f["frames"][s] for s in shown]) if shown else None  # previews only
    ev_boxes, ev_alpha, source = _coarse_boxes(_gather(cam_dirs, row, secs, scratch), (h, w), cfg, scratch,
                                               weighting)

    boxes = np.tile(np.array([0, 0, h, w], np.int32), (t, 1))
    in_event = np.zeros(t, bool)
    in_event[secs] = True
    boxes[secs] = ev_boxes
    boxes = smooth_boxes(boxes, in_event)
    box_source = np.zeros(t, np.uint8)
    box_source[secs] = source
    alpha = np.full(t, np.nan, np.float32)
    alpha[secs] = ev_alpha
    attrs.update(row_key=row.key, category_id=int(row.category_id), box_sources=json.dumps(BOX_SOURCES),
                 n_frames=t, height=h, width=w)
    write_crop_file(Path(out_dir) / f"{row.key}.h5", feat, {"boxes": boxes, "has_box": in_event,
                    "box_source": box_source, "box_alpha": alpha, "audio_valid": audio_valid}, attrs)
    if frames is not None:
        crops = crop_frames(frames, shown, boxes, in_event)
        for k, s in enumerate(shown):
            cv2.imwrite(str(Path(out_dir) / "previews" / f"{row.key}_s{s:03d}.png"),
                        _crop_preview(frames[k].copy(), boxes[s], crops[k]))
    counts = Counter(BOX_SOURCES[int(s)] for s in source)
    return {"event_seconds": [int(s) for s in secs], "box_sources": dict(counts)}


def coarse_boxes_and_crops(
    cam_dirs: Mapping[str, Path],
    rows: Iterable[RowLike],
    feature_dir: Path,
    out_dir: Path,
    cfg: PseudoGTConfig | None = None,
    callbacks: Callbacks = NO_CALLBACKS,
    weighting: str = PROBABILITY,
) -> dict[str, Any]:
    """Fuse the coarse CAMs, box and smooth, and write one crop file per row.

    ``weighting``: the branch weights of the fusion (``sta_models.fusion_weights``; default SPEC §5).

    Output ``out_dir/<row.key>.h5`` (``sta_models.crop_files``, format 2): ``boxes`` [T,4] int32,
    ``has_box`` [T] bool, ``box_source`` [T] uint8 (``BOX_SOURCES``), ``box_alpha`` [T] float32
    (NaN = fallback or no box), ``audio_valid`` and the feature file's attributes; the event
    seconds' frames are cropped to their box and resized to H×W when read (``FeatureDataset``).
    ``out_dir/previews/<row.key>_s<sec>.png``: frame with its box next to the crop. Returns a summary dict.
    """
    cfg = cfg or PseudoGTConfig()
    rows = list(rows)
    out_dir = Path(out_dir)
    (out_dir / "previews").mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"rows": len(rows), "written": 0, "missing_features": [], "box_sources": Counter(),
                               "fusion_weighting": weighting}
    per_row: dict[str, Any] = {}
    scratch = _Scratch()
    for done, row in enumerate(rows):
        callbacks.check_cancel()
        res = _crop_row(row, cam_dirs, feature_dir, out_dir, cfg, scratch, summary["written"] < PREVIEW_ROWS,
                        weighting)
        if res is None:
            summary["missing_features"].append(row.key)
            callbacks.log(f"crops: {row.key}: no feature file {row.video_id}.h5, skipped")
            continue
        summary["box_sources"].update(res["box_sources"])
        summary["written"] += 1
        per_row[row.key] = res
        callbacks.on_progress(done + 1, len(rows), "crops")
    summary["box_sources"] = dict(summary["box_sources"])
    summary["per_row"] = per_row
    write_json_atomic(out_dir / "crops.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------
# Stage 2: fine fusion → pseudo ground truth
# ---------------------------------------------------------------------------------------------


def _reasons(row: RowLike, secs: np.ndarray, names: list[str], loaded: Mapping[str, CamFile | None],
             avail: np.ndarray, audio_valid: np.ndarray) -> list[str]:
    """Why each of ``secs`` has no pseudo-GT: no branch selected it, plus what kept a branch out."""
    out = []
    for j, s in enumerate(secs):
        why = ["no branch selected it"]
        if all(c is None for c in loaded.values()):
            why = ["no fine CAMs for this row"]
        for b, name in enumerate(names):
            if avail[b, j]:
                continue
            spec = BRANCHES.get(name)
            if spec is not None and len(row.seconds) < spec.min_event_s:
                why.append(f"{name}: event too short")
            elif spec is not None and spec.needs_audio and not bool(audio_valid[s]):
                why.append(f"{name}: no audio")
            else:
                why.append(f"{name}: no CAM")
        out.append("; ".join(why))
    return out


def _preview(frame_crop: np.ndarray, box: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Crop shown at its box on a grey canvas, pseudo-GT heat map blended over it (BGR uint8)."""
    h, w = heat.shape
    y0, x0, y1, x1 = (int(v) for v in box)
    canvas = np.full((h, w, 3), 96, np.uint8)
    if y1 > y0 and x1 > x0:
        cv2.cvtColor(cv2.resize(frame_crop, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA),
                     cv2.COLOR_RGB2BGR, dst=canvas[y0:y1, x0:x1])
    colour = cv2.applyColorMap(cv2.convertScaleAbs(heat, alpha=255.0), cv2.COLORMAP_JET)
    blend = cv2.addWeighted(canvas, 0.5, colour, 0.5, 0)
    cv2.rectangle(blend, (x0, y0), (max(x1 - 1, x0), max(y1 - 1, y0)), (255, 255, 255), 1)
    return blend


def _fine_maps(g: _Gathered, keep: np.ndarray, boxes: np.ndarray, size: tuple[int, int],
               seconds: np.ndarray, cfg: PseudoGTConfig, scratch: _Scratch,
               weighting: str = PROBABILITY) -> np.ndarray:
    """Pseudo-GT maps [len(keep), H, W] float32 (in ``scratch``) for event seconds ``keep``.

    Steps 4–6 of SPEC §5: fine CAMs pasted at ``boxes`` [n, 4], fused, summed over the temporal
    window (the average's division cancels in the min-max that follows), min-max, sparsified.
    """
    fused = scratch.get("fine", (len(keep), *size))
    out = scratch.get("gt", (len(keep), *size))
    for i, j in enumerate(keep):
        use = np.flatnonzero(g.selected[:, j] & (g.probs[:, j] > 0))
        # the weight reads the crop's own CAM, before pasting (a box's size is no contrast)
        w = [branch_weight(g.probs[b, j], g.cam(int(b), j, scratch), weighting) for b in use]
        fuse_frame([g.pasted(int(b), j, boxes[j], size, scratch) for b in use], w, fused[i])
    for i, nbrs in enumerate(temporal_neighbours(seconds, cfg.smooth_window)):
        _sparsify_normalised(_normalise(_window_sum(fused, nbrs, out[i])), cfg.sparsify_factor)
    return out


def _pseudo_gt_row(row: RowLike, cam_dirs: Mapping[str, Path], crop_dir: Path, out_dir: Path,
                   cfg: PseudoGTConfig, scratch: _Scratch, preview: bool = True,
                   weighting: str = PROBABILITY) -> dict[str, Any] | None:
    """Write one row's pseudo-GT file and previews; its report entry, or None without a crop file."""
    crop = Path(crop_dir) / f"{row.key}.h5"
    if not crop.exists():
        return None
    with h5py.File(crop, "r") as f:
        boxes_all = np.asarray(f["boxes"][()], np.int32)
        audio_valid = np.asarray(f["audio_valid"][()], bool)
        has_box = np.asarray(f["has_box"][()], bool)
        box_file = is_box_file(f)
        t, h, w = ((int(f.attrs["n_frames"]), int(f.attrs["height"]), int(f.attrs["width"])) if box_file
                   else f["frames"].shape[:3])
        secs = _event_seconds(row, t)
        g = _gather(cam_dirs, row, secs, scratch)
        has = g.selected.any(axis=0)
        keep = np.flatnonzero(has)
        out_secs = secs[keep]
        step = max(1, len(keep) // PREVIEWS_PER_ROW)
        shown = list(range(len(keep)))[::step][:PREVIEWS_PER_ROW] if preview else []  # only these frames are read
        picked = [int(out_secs[i]) for i in shown]
        frames: np.ndarray | list[np.ndarray]
        if box_file:
            with h5py.File(source_features(crop, f), "r") as src:
                frames = crop_frames(np.stack([src["frames"][s] for s in picked]), picked, boxes_all, has_box) \
                    if picked else []
        else:
            frames = [f["frames"][s] for s in picked]  # one read each (h5py point lists are slow)
    gt = _fine_maps(g, keep, boxes_all[secs], (h, w), out_secs, cfg, scratch, weighting)

    def write(f: h5py.File) -> None:
        f.create_dataset("maps", data=to_float16(gt), chunks=(1, *gt.shape[1:]) if len(gt) else None)
        f.create_dataset("seconds", data=out_secs.astype(np.int32))
        f.create_dataset("boxes", data=boxes_all[out_secs])
        f.attrs["row_key"] = row.key
        f.attrs["video_id"] = row.video_id
        f.attrs["category_id"] = int(row.category_id)

    _write_h5_atomic(Path(out_dir) / f"{row.key}.h5", write)
    for k, i in enumerate(shown):
        s = int(out_secs[i])
        cv2.imwrite(str(Path(out_dir) / "previews" / f"{row.key}_s{s:03d}.png"), _preview(frames[k], boxes_all[s], gt[i]))
    missing = np.flatnonzero(~has)
    why = _reasons(row, secs[missing], g.names, g.loaded, g.available[:, missing], audio_valid)
    return {"seconds": [int(s) for s in out_secs],
            "without": {str(int(s)): r for s, r in zip(secs[missing], why, strict=True)}}


def fuse_pseudo_gt(
    cam_dirs: Mapping[str, Path],
    crop_dir: Path,
    rows: Iterable[RowLike],
    out_dir: Path,
    cfg: PseudoGTConfig | None = None,
    callbacks: Callbacks = NO_CALLBACKS,
    weighting: str = PROBABILITY,
) -> dict[str, Any]:
    """Paste the fine CAMs back at their boxes, fuse, smooth in time and sparsify.

    ``weighting``: the branch weights of the fusion (``sta_models.fusion_weights``; default SPEC §5).

    Writes ``out_dir/<row.key>.h5`` (``maps`` [n,H,W] float16, ``seconds`` [n] int32, ``boxes``
    [n,4] int32), ``out_dir/previews/<row.key>_s<sec>.png`` and ``out_dir/report.json``
    (per row: seconds with a pseudo-GT, and a reason for every event second without one).
    """
    cfg = cfg or PseudoGTConfig()
    rows = list(rows)
    out_dir = Path(out_dir)
    (out_dir / "previews").mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"rows": {}, "missing_crops": [], "reasons": Counter(), "fusion_weighting": weighting}
    n_maps = 0
    scratch = _Scratch()
    for done, row in enumerate(rows):
        callbacks.check_cancel()
        res = _pseudo_gt_row(row, cam_dirs, crop_dir, out_dir, cfg, scratch, len(report["rows"]) < PREVIEW_ROWS,
                             weighting)
        if res is None:
            report["missing_crops"].append(row.key)
            report["rows"][row.key] = {"seconds": [], "without": {}, "error": "no crop file"}
            continue
        n_maps += len(res["seconds"])
        report["reasons"].update(res["without"].values())
        report["rows"][row.key] = res
        callbacks.on_progress(done + 1, len(rows), "pseudo_gt")
    report["reasons"] = dict(report["reasons"])
    report["maps"] = n_maps
    write_json_atomic(out_dir / "report.json", report)
    return {
        "rows": len(rows),
        "maps": n_maps,
        "missing_crops": report["missing_crops"],
        "reasons": report["reasons"],
        "report": str(out_dir / "report.json"),
        "fusion_weighting": weighting,
    }
