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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import h5py
import numpy as np

from sta_models.callbacks import NO_CALLBACKS, Callbacks
from sta_models.config import PseudoGTConfig
from sta_models.jsonio import write_json_atomic

BOX_SOURCES = {0: "not in event", 1: "fused selected branches", 2: "average of unselected CAMs", 3: "full frame"}
PREVIEWS_PER_ROW = 3
ST_MIN_EVENT = 3  # the ST branch skips events shorter than this (SPEC §3)


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
        res = cv2.multiply(flat, 1.0, dtype=cv2.CV_32F).reshape(a.shape)
        if out is None:
            return res
        np.copyto(out, res, casting="unsafe")
        return out
    dst = out.reshape(flat.shape)  # a view: OpenCV writes into it
    if cv2.multiply(flat, 1.0, dst=dst, dtype=cv2.CV_32F) is not dst:  # pragma: no cover - defensive
        raise RuntimeError("OpenCV did not write into the given buffer")
    return out


def to_float16(a: np.ndarray) -> np.ndarray:
    """float32 → float16 through OpenCV: round to nearest even like numpy's cast (bit-exact), faster."""
    a = np.asarray(a)
    if a.dtype != np.float32 or a.size == 0 or a.ndim == 0:
        return np.asarray(a, np.float16)
    flat = np.ascontiguousarray(a).reshape(-1, a.shape[-1])
    return cv2.multiply(flat, 1.0, dtype=cv2.CV_16F).reshape(a.shape)


def minmax(maps: np.ndarray) -> np.ndarray:
    """Min-max normalise each map over its last two axes to [0, 1] (float32); constant maps → 0."""
    m = to_float32(maps)
    if isinstance(maps, np.ndarray) and np.may_share_memory(m, maps):
        m = m.copy()  # never normalise the caller's array in place
    return _minmax_inplace(m)


def _minmax_inplace(m: np.ndarray) -> np.ndarray:
    """:func:`minmax` of a float32 array that may be overwritten (no copy)."""
    lo = m.min(axis=(-2, -1), keepdims=True)
    span = m.max(axis=(-2, -1), keepdims=True) - lo
    m -= lo
    m *= np.divide(1.0, span, out=np.zeros_like(span), where=span > 0)
    return m


def fuse_maps(
    maps: np.ndarray, probs: np.ndarray, selected: np.ndarray, eps: float = 1e-4, normalised: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Probability-weighted fusion over the branches that selected each frame.

    ``maps`` [B, ..., H, W], ``probs`` and ``selected`` [B, ...]. Returns (F [..., H, W],
    has [...]) with F = minmax((Σ p_b·M_b + eps) / (Σ p_b + eps)) over selecting branches, M_b
    the min-max normalised maps (pass ``normalised=True`` if they already are); frames no branch
    selected get has=False and an all-zero F.
    """
    m = np.asarray(maps, np.float32) if normalised else minmax(maps)
    sel = np.asarray(selected, bool)
    w = np.where(sel, np.asarray(probs, np.float32), np.float32(0.0)).astype(np.float32)
    has = sel.any(axis=0)
    num = np.einsum("b...,b...hw->...hw", w, m)
    num += np.float32(eps)
    num /= (w.sum(axis=0) + np.float32(eps))[..., None, None]
    fused = _minmax_inplace(num)
    fused[~has] = 0.0
    return fused, has


def box_from_map(
    fused: np.ndarray, alpha_start: float = 2.0, alpha_step: float = 0.05, min_box: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Box of F > α·mean(F), α lowered from ``alpha_start`` until the box is ≥ ``min_box`` both ways.

    Works on [..., H, W]; returns (boxes [..., 4] int32 y0,x0,y1,x1, alpha [...] float32; NaN
    alpha = the fallback of the module docstring). All α values are tried at once: the mask
    only grows as α falls, so per-row and per-column maxima against every threshold decide it.
    """
    f = np.asarray(fused, dtype=np.float32)
    *lead, h, w = f.shape
    n_alpha = int(np.floor(alpha_start / alpha_step + 1e-9))
    alphas = alpha_start - alpha_step * np.arange(n_alpha + 1, dtype=np.float64)
    alphas = alphas[alphas > 1e-9].astype(np.float32)  # α = 0 would box every non-zero pixel
    need_h, need_w = min(min_box, h), min(min_box, w)
    thr = alphas * f.mean(axis=(-2, -1))[..., None]  # [..., K]
    rows_in = f.max(axis=-1)[..., None, :] > thr[..., None]  # [..., K, H]
    cols_in = f.max(axis=-2)[..., None, :] > thr[..., None]  # [..., K, W]
    y0, y1 = _first_last(rows_in)
    x0, x1 = _first_last(cols_in)
    ok = ((y1 - y0) >= need_h) & ((x1 - x0) >= need_w)  # [..., K]
    found = ok.any(axis=-1)
    k = np.where(found, ok.argmax(axis=-1), len(alphas) - 1)[..., None]
    pick = lambda a: np.take_along_axis(a, k, axis=-1)[..., 0]  # noqa: E731
    boxes = np.stack([pick(y0), pick(x0), pick(y1), pick(x1)], axis=-1)
    alpha = np.where(found, alphas[k[..., 0]], np.nan).astype(np.float32)
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


def crop_resize(frames: np.ndarray, boxes: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """Crop each frame [T, H, W, C] to its box and resize back to ``size`` (default H×W)."""
    t, h, w = frames.shape[:3]
    oh, ow = size or (h, w)
    out = np.empty((t, oh, ow) + frames.shape[3:], dtype=frames.dtype)
    for i in range(t):  # one cv2 call per frame; the pixels are handled inside OpenCV
        y0, x0, y1, x1 = (int(v) for v in boxes[i])
        out[i] = cv2.resize(frames[i, y0:y1, x0:x1], (ow, oh), interpolation=cv2.INTER_LINEAR)
    return out


def _crop_resize_inplace(frames: np.ndarray, index: Iterable[int], boxes: np.ndarray) -> None:
    """``frames[i]`` ← its box crop resized back to H×W, for each ``i`` of ``index`` (as :func:`crop_resize`)."""
    h, w = frames.shape[1:3]
    for i, box in zip(index, boxes, strict=True):
        y0, x0, y1, x1 = (int(v) for v in box)
        frames[i] = cv2.resize(frames[i, y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_LINEAR)


def paste_maps(cams: np.ndarray, boxes: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """Resize each map [n, h, w] to its box and paste it into a zero canvas [n, H, W] (float32)."""
    out = np.zeros((len(cams),) + tuple(canvas), dtype=np.float32)
    for i, (cam, box) in enumerate(zip(cams, boxes, strict=True)):
        y0, x0, y1, x1 = (int(v) for v in box)
        if y1 > y0 and x1 > x0:
            out[i, y0:y1, x0:x1] = cv2.resize(to_float32(cam), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return out


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of [n, h, w] maps to [n, *size] (float32); no-op when already that size."""
    m = to_float32(maps)
    if m.shape[-2:] == tuple(size):
        return m
    out = np.empty((len(m),) + tuple(size), dtype=np.float32)
    for i in range(len(m)):
        out[i] = cv2.resize(m[i], (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return out


def temporal_smooth(maps: np.ndarray, seconds: Sequence[int], window: int = 3) -> np.ndarray:
    """Centred moving average in time over the seconds that have a map (truncated at gaps/edges)."""
    m = np.asarray(maps, dtype=np.float32)
    secs = np.asarray(seconds, dtype=np.int64)
    if len(m) == 0 or window <= 1:
        return m.copy()
    half = window // 2
    pos = secs - secs.min() + half  # position in a zero-padded dense timeline
    count = np.zeros(int(pos.max()) + half + 1, dtype=np.float32)
    count[pos] = 1
    total = np.zeros_like(m)
    n = np.zeros(len(m), dtype=np.float32)
    if np.all(np.diff(secs) == 1):  # consecutive seconds (the usual event): shifted slices of m
        for k in range(-half, half + 1):  # same additions in the same order; the padding adds 0
            lo, hi = max(0, -k), min(len(m), len(m) - k)
            if hi > lo:
                total[lo:hi] += m[lo + k : hi + k]
            n += count[pos + k]
    else:
        dense = np.zeros((len(count),) + m.shape[1:], dtype=np.float32)
        dense[pos] = m
        for k in range(-half, half + 1):  # `window` vectorised passes over all seconds
            total += dense[pos + k]
            n += count[pos + k]
    total /= n[:, None, None]
    return total


def sparsify(maps: np.ndarray, factor: float = 3.0) -> np.ndarray:
    """Min-max each map, then zero the pixels below min(factor·mean, max) (the peak survives)."""
    return _sparsify_inplace(minmax(maps), factor)


def _sparsify_inplace(m: np.ndarray, factor: float) -> np.ndarray:
    """:func:`sparsify` of a float32 array that may be overwritten."""
    m = _minmax_inplace(m)
    thr = np.minimum(factor * m.mean(axis=(-2, -1), keepdims=True), m.max(axis=(-2, -1), keepdims=True))
    m[m < thr] = 0.0
    return m


# ---------------------------------------------------------------------------------------------
# File helpers
# ---------------------------------------------------------------------------------------------


@dataclass
class _Cams:
    cams: np.ndarray  # [n, c, c]
    seconds: np.ndarray
    pred_class: np.ndarray
    true_prob: np.ndarray


def _read_cams(path: Path) -> _Cams | None:
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        return _Cams(
            cams=f["cams"][()],
            seconds=np.asarray(f["seconds"][()], dtype=np.int64),
            pred_class=np.asarray(f["pred_class"][()], dtype=np.int64),
            true_prob=np.asarray(f["true_prob"][()], dtype=np.float32),
        )


class _Scratch:
    """Zeroed buffers reused from row to row: a fresh [B, n, H, W] array per row costs ~1 page fault
    per 4–16 kB on first touch (glibc maps allocations this size anew each time)."""

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def zeros(self, key: str, shape: tuple[int, ...], dtype: Any = np.float32, fill: bool = True) -> np.ndarray:
        """The buffer ``key`` of this shape and dtype, zeroed (``fill=False``: contents left over)."""
        buf = self._bufs.get(key)
        if buf is None or buf.shape != shape or buf.dtype != np.dtype(dtype):
            buf = self._bufs[key] = np.zeros(shape, dtype)
        elif fill:
            buf.fill(0)
        return buf


@dataclass
class _Gathered:
    """The branches' per-second metadata for one row; ``index[b][j]`` = row in branch b's file or -1."""

    names: list[str]
    loaded: dict[str, _Cams | None]
    index: np.ndarray  # [B, n] int
    probs: np.ndarray  # [B, n]
    selected: np.ndarray  # [B, n] bool
    available: np.ndarray  # [B, n] bool

    def stack(self, size: tuple[int, int], boxes: np.ndarray | None = None,
              scratch: _Scratch | None = None) -> np.ndarray:
        """Maps [B, n, H, W] float32: resized to ``size``, or pasted at ``boxes`` [n, 4] (fine CAMs).

        With ``scratch`` the result lives in its reused buffer (valid until the next call).
        """
        shape = (len(self.names), self.index.shape[1]) + tuple(size)
        full = boxes is None and bool(np.all(self.index >= 0))  # every map overwritten: no zeroing
        out = np.zeros(shape, dtype=np.float32) if scratch is None else scratch.zeros("stack", shape, fill=not full)
        for b, name in enumerate(self.names):
            c = self.loaded[name]
            js = np.flatnonzero(self.index[b] >= 0)
            if c is None or len(js) == 0:
                continue
            idx = self.index[b, js]
            whole = len(idx) == len(c.cams) and bool(np.all(idx == np.arange(len(idx))))
            cams = c.cams if whole else c.cams[idx]
            if boxes is None and cams.shape[-2:] == tuple(size) and js[-1] - js[0] + 1 == len(js):
                to_float32(cams, out=out[b, js[0] : js[-1] + 1])  # converted straight into place
            elif boxes is None:
                out[b, js] = resize_maps(cams, size)
            else:  # each map converted into one reused buffer, resized into the zero canvas
                buf = np.empty(cams.shape[1:], np.float32)
                for j, cam, box in zip(js, cams, boxes[js], strict=True):
                    y0, x0, y1, x1 = (int(v) for v in box)
                    if y1 > y0 and x1 > x0:
                        out[b, j, y0:y1, x0:x1] = cv2.resize(
                            to_float32(cam, out=buf), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        return out


def _gather(cam_dirs: Mapping[str, Path], row: RowLike, seconds: np.ndarray) -> _Gathered:
    names = sorted(cam_dirs)
    shape = (len(names), len(seconds))
    g = _Gathered(names, {}, np.full(shape, -1, np.int64), np.zeros(shape, np.float32),
                  np.zeros(shape, bool), np.zeros(shape, bool))
    for b, name in enumerate(names):
        c = g.loaded[name] = _read_cams(Path(cam_dirs[name]) / f"{row.key}.h5")
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


def _write_h5_atomic(path: Path, write) -> None:  # type: ignore[no-untyped-def]
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


def coarse_boxes_and_crops(
    cam_dirs: Mapping[str, Path],
    rows: Iterable[RowLike],
    feature_dir: Path,
    out_dir: Path,
    cfg: PseudoGTConfig | None = None,
    callbacks: Callbacks = NO_CALLBACKS,
) -> dict[str, Any]:
    """Fuse the coarse CAMs, box and smooth, and write one crop feature file per row.

    Output ``out_dir/<row.key>.h5`` has the feature file's layout (``frames`` [T,H,W,3] with event
    seconds cropped to their box and resized to H×W, ``audio``, ``audio_valid``, its attributes)
    plus ``boxes`` [T,4] int32, ``has_box`` [T] bool, ``box_source`` [T] uint8 (``BOX_SOURCES``)
    and ``box_alpha`` [T] float32 (NaN = fallback or no box). Returns a summary dict.
    """
    cfg = cfg or PseudoGTConfig()
    rows = list(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"rows": len(rows), "written": 0, "missing_features": [], "box_sources": Counter()}
    per_row: dict[str, Any] = {}
    scratch = _Scratch()
    for done, row in enumerate(rows):
        callbacks.check_cancel()
        feat = Path(feature_dir) / f"{row.video_id}.h5"
        if not feat.exists():
            summary["missing_features"].append(row.key)
            callbacks.log(f"crops: {row.key}: no feature file {feat.name}, skipped")
            continue
        with h5py.File(feat, "r") as f:
            frames = f["frames"][()]
            audio = f["audio"][()]
            audio_valid = f["audio_valid"][()]
            attrs = dict(f.attrs)
        t, h, w = frames.shape[:3]
        secs = _event_seconds(row, t)
        g = _gather(cam_dirs, row, secs)
        maps = _minmax_inplace(g.stack((h, w), scratch=scratch))
        fused, has = fuse_maps(maps, g.probs, g.selected, cfg.fusion_eps, normalised=True)
        any_avail = g.available.any(axis=0)
        fallback = np.flatnonzero(~has & any_avail)
        if len(fallback):  # unselected seconds: unweighted average of the CAMs that exist
            fused[fallback], _ = fuse_maps(maps[:, fallback], np.ones((len(maps), len(fallback))),
                                           g.available[:, fallback], cfg.fusion_eps, normalised=True)
        ev_boxes, ev_alpha = box_from_map(fused, cfg.alpha_start, cfg.alpha_step, cfg.min_box)
        source = np.where(has, 1, np.where(any_avail, 2, 3)).astype(np.uint8)
        ev_boxes[source == 3] = (0, 0, h, w)
        ev_alpha[source == 3] = np.nan

        boxes = np.tile(np.array([0, 0, h, w], np.int32), (t, 1))
        in_event = np.zeros(t, bool)
        in_event[secs] = True
        boxes[secs] = ev_boxes
        boxes = smooth_boxes(boxes, in_event)
        box_source = np.zeros(t, np.uint8)
        box_source[secs] = source
        alpha = np.full(t, np.nan, np.float32)
        alpha[secs] = ev_alpha
        crops = frames  # read for this row only: event seconds are cropped in place
        _crop_resize_inplace(crops, secs, boxes[secs])

        def write(f: h5py.File, crops=crops, boxes=boxes, in_event=in_event, box_source=box_source,
                  alpha=alpha, audio=audio, audio_valid=audio_valid, attrs=attrs, row=row) -> None:
            chunked = len(crops) > 0  # per-second chunks, like the extraction's files
            f.create_dataset("frames", data=crops, chunks=(1, *crops.shape[1:]) if chunked else None)
            f.create_dataset("audio", data=audio, chunks=(1, *audio.shape[1:]) if chunked else None)
            f.create_dataset("audio_valid", data=audio_valid)
            f.create_dataset("boxes", data=boxes)
            f.create_dataset("has_box", data=in_event)
            f.create_dataset("box_source", data=box_source)
            f.create_dataset("box_alpha", data=alpha)
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["row_key"] = row.key
            f.attrs["category_id"] = int(row.category_id)
            f.attrs["box_sources"] = json.dumps(BOX_SOURCES)

        _write_h5_atomic(out_dir / f"{row.key}.h5", write)
        counts = Counter(BOX_SOURCES[int(s)] for s in source)
        summary["box_sources"].update(counts)
        summary["written"] += 1
        per_row[row.key] = {"event_seconds": [int(s) for s in secs], "box_sources": dict(counts)}
        callbacks.on_progress(done + 1, len(rows), "crops")
    summary["box_sources"] = dict(summary["box_sources"])
    summary["per_row"] = per_row
    write_json_atomic(out_dir / "crops.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------
# Stage 2: fine fusion → pseudo ground truth
# ---------------------------------------------------------------------------------------------


def _reasons(row: RowLike, secs: np.ndarray, names: list[str], loaded: Mapping[str, _Cams | None],
             avail: np.ndarray, audio_valid: np.ndarray) -> list[str]:
    """Why each of ``secs`` has no pseudo-GT: no branch selected it, plus what kept a branch out."""
    short = len(row.seconds) < ST_MIN_EVENT
    out = []
    for j, s in enumerate(secs):
        why = ["no branch selected it"]
        if all(c is None for c in loaded.values()):
            why = ["no fine CAMs for this row"]
        for b, name in enumerate(names):
            if avail[b, j]:
                continue
            if name == "st" and short:
                why.append("st: event too short")
            elif name == "sa" and not bool(audio_valid[s]):
                why.append("sa: no audio")
            else:
                why.append(f"{name}: no CAM")
        out.append("; ".join(why))
    return out


def _preview(frame_crop: np.ndarray, box: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Crop shown at its box on a grey canvas, pseudo-GT heat map blended over it (BGR uint8)."""
    h, w = heat.shape
    canvas = np.full((h, w, 3), 96, np.uint8)
    y0, x0, y1, x1 = (int(v) for v in box)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = cv2.resize(frame_crop, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    canvas = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)
    colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    blend = cv2.addWeighted(canvas, 0.5, colour, 0.5, 0)
    cv2.rectangle(blend, (x0, y0), (max(x1 - 1, x0), max(y1 - 1, y0)), (255, 255, 255), 1)
    return blend


def fuse_pseudo_gt(
    cam_dirs: Mapping[str, Path],
    crop_dir: Path,
    rows: Iterable[RowLike],
    out_dir: Path,
    cfg: PseudoGTConfig | None = None,
    callbacks: Callbacks = NO_CALLBACKS,
) -> dict[str, Any]:
    """Paste the fine CAMs back at their boxes, fuse, smooth in time and sparsify.

    Writes ``out_dir/<row.key>.h5`` (``maps`` [n,H,W] float16, ``seconds`` [n] int32, ``boxes``
    [n,4] int32), ``out_dir/previews/<row.key>_s<sec>.png`` and ``out_dir/report.json``
    (per row: seconds with a pseudo-GT, and a reason for every event second without one).
    """
    cfg = cfg or PseudoGTConfig()
    rows = list(rows)
    out_dir = Path(out_dir)
    (out_dir / "previews").mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"rows": {}, "missing_crops": [], "reasons": Counter()}
    n_maps = 0
    scratch = _Scratch()
    for done, row in enumerate(rows):
        callbacks.check_cancel()
        crop = Path(crop_dir) / f"{row.key}.h5"
        if not crop.exists():
            report["missing_crops"].append(row.key)
            report["rows"][row.key] = {"seconds": [], "without": {}, "error": "no crop file"}
            continue
        with h5py.File(crop, "r") as f:
            boxes_all = np.asarray(f["boxes"][()], np.int32)
            audio_valid = np.asarray(f["audio_valid"][()], bool)
            t, h, w = f["frames"].shape[:3]
            secs = _event_seconds(row, t)
            g = _gather(cam_dirs, row, secs)
            has = g.selected.any(axis=0)  # = fuse_maps' ``has``
            keep = np.flatnonzero(has)
            out_secs = secs[keep]
            step = max(1, len(keep) // PREVIEWS_PER_ROW)
            shown = list(range(len(keep)))[::step][:PREVIEWS_PER_ROW]  # previews: only these frames are read
            frames = [f["frames"][int(out_secs[i])] for i in shown]  # one read each (h5py point lists are slow)
        pasted = _minmax_inplace(g.stack((h, w), boxes_all[secs], scratch))
        fused, _ = fuse_maps(pasted, g.probs, g.selected, cfg.fusion_eps, normalised=True)
        smoothed = temporal_smooth(fused if len(keep) == len(fused) else fused[keep], out_secs, cfg.smooth_window)
        gt = _sparsify_inplace(smoothed, cfg.sparsify_factor)

        def write(f: h5py.File, gt=gt, out_secs=out_secs, boxes=boxes_all[out_secs], row=row) -> None:
            f.create_dataset("maps", data=to_float16(gt), chunks=(1, *gt.shape[1:]) if len(gt) else None)
            f.create_dataset("seconds", data=out_secs.astype(np.int32))
            f.create_dataset("boxes", data=boxes)
            f.attrs["row_key"] = row.key
            f.attrs["video_id"] = row.video_id
            f.attrs["category_id"] = int(row.category_id)

        _write_h5_atomic(out_dir / f"{row.key}.h5", write)
        n_maps += len(out_secs)
        missing = np.flatnonzero(~has)
        why = _reasons(row, secs[missing], g.names, g.loaded, g.available[:, missing], audio_valid)
        report["reasons"].update(why)
        report["rows"][row.key] = {
            "seconds": [int(s) for s in out_secs],
            "without": {str(int(s)): r for s, r in zip(secs[missing], why, strict=True)},
        }
        for k, i in enumerate(shown):
            s = int(out_secs[i])
            img = _preview(frames[k], boxes_all[s], gt[i])
            cv2.imwrite(str(out_dir / "previews" / f"{row.key}_s{s:03d}.png"), img)
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
    }
