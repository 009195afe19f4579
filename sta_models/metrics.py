"""Saliency metrics with the exact MIT saliency benchmark definitions (SPEC §7).

Every function takes 2-D arrays and returns a Python float; which arguments each one gets in an
evaluation is declared in :mod:`sta_models.metric_table`. The prediction ``s`` is resized to the
ground truth's shape first when they differ (cv2 bicubic when enlarging, area averaging when
shrinking — the closest cheap match to MATLAB's antialiased ``imresize``; resize outside the metric
when bit-level agreement with MATLAB matters). Undefined cases (constant map, no fixations, no
negatives) give NaN, never an exception, so an evaluation can drop and count them.
"""

from __future__ import annotations

import numpy as np

from sta_models.metric_table import NAMES

EPS = 2.220446049250313e-16  # MATLAB eps, pinned by the MIT code

RngLike = np.random.Generator | int | None


def _as2d(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D map, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr.astype(np.float64, copy=False)


def resize_map(s: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D map to ``shape`` (rows, cols) as float64; a no-op when it already has it."""
    s = np.asarray(s, dtype=np.float64)
    if s.shape == tuple(shape):
        return s
    import cv2

    h, w = int(shape[0]), int(shape[1])
    shrink = h * w < s.shape[0] * s.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return cv2.resize(s, (w, h), interpolation=interp).astype(np.float64)


def _prepare(s: np.ndarray, ref: np.ndarray, ref_name: str) -> tuple[np.ndarray, np.ndarray]:
    ref2 = _as2d(ref, ref_name)
    s2 = _as2d(s, "s")
    return resize_map(s2, ref2.shape), ref2


def _rng(rng: RngLike) -> np.random.Generator:
    # None means a fixed seed: the same inputs always give the same score.
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


def _minmax(s: np.ndarray) -> np.ndarray | None:
    lo, hi = float(s.min()), float(s.max())
    if not hi > lo:  # constant (or NaN) map: MATLAB divides by zero and gets NaN
        return None
    return (s - lo) / (hi - lo)


def cc(s: np.ndarray, g: np.ndarray) -> float:
    """Pearson correlation of the standardised maps (``CC.m``); NaN if either map is constant."""
    s, g = _prepare(s, g, "g")
    s = s - s.mean()
    g = g - g.mean()
    den = np.sqrt(np.sum(s * s) * np.sum(g * g))
    if not den > 0:
        return float("nan")
    return float(np.sum(s * g) / den)


def nss(s: np.ndarray, fix: np.ndarray) -> float:
    """Mean of S standardised with ddof=1 over the fixated pixels, each pixel once (``NSS.m``)."""
    s, f = _prepare(s, fix, "fix")
    mask = f > 0
    if not mask.any() or s.size < 2:
        return float("nan")
    sd = s.std(ddof=1)
    if not sd > 0:
        return float("nan")
    return float(((s[mask] - s.mean()) / sd).mean())


def _sim_norm(m: np.ndarray) -> np.ndarray | None:
    if not m.any():  # an all-zero map stays zero, as in similarity.m
        return m
    mm = _minmax(m)
    if mm is None:
        return None
    return mm / mm.sum()


def sim(s: np.ndarray, g: np.ndarray) -> float:
    """Histogram intersection of the min-max normalised, sum-normalised maps (``similarity.m``)."""
    s, g = _prepare(s, g, "g")
    a, b = _sim_norm(s), _sim_norm(g)
    if a is None or b is None:
        return float("nan")
    return float(np.minimum(a, b).sum())


def kld(s: np.ndarray, g: np.ndarray) -> float:
    """KL(G‖S) of the sum-normalised maps with MATLAB eps (``KLdiv.m``); NaN if a map sums to 0."""
    s, g = _prepare(s, g, "g")
    ss, gs = s.sum(), g.sum()
    if not (ss != 0 and gs != 0 and np.isfinite(ss) and np.isfinite(gs)):
        return float("nan")
    p, q = s / ss, g / gs
    return float(np.sum(q * np.log(EPS + q / (p + EPS))))


def auc_judd(s: np.ndarray, fix: np.ndarray, jitter: bool = False, rng: RngLike = None) -> float:
    """AUC-Judd (``AUC_Judd.m``): one threshold per fixated pixel, negatives = the other pixels.

    ``jitter`` adds U(0,1)·1e-7 before normalisation (the MIT default) to break ties; seeded.
    Vectorised: the count of pixels ≥ each threshold comes from one sort and ``searchsorted``.
    """
    s, f = _prepare(s, fix, "fix")
    mask = f > 0
    if not mask.any():
        return float("nan")
    if jitter:
        s = s + _rng(rng).random(s.shape) / 1e7
    sn = _minmax(s)
    if sn is None:
        return float("nan")
    flat = sn.ravel()
    n_pix = flat.size
    sth = np.sort(flat[mask.ravel()])[::-1]
    n_fix = sth.size
    if n_pix == n_fix:
        return float("nan")
    above = n_pix - np.searchsorted(np.sort(flat), sth, side="left")  # #{S >= t_i}
    i = np.arange(1, n_fix + 1)
    tp = np.concatenate(([0.0], i / n_fix, [1.0]))
    fp = np.concatenate(([0.0], (above - i) / (n_pix - n_fix), [1.0]))
    return float(np.trapezoid(tp, fp))


def _split_aucs(sth: np.ndarray, neg: np.ndarray, step: float) -> np.ndarray:
    """Per-split ROC areas at thresholds 0:step:1 (descending), as the MIT split-based AUCs.

    MATLAB uses thresholds up to max([Sth; neg]) of each split; thresholds above that maximum
    only add (0, 0) points, which carry no area, so one shared grid up to 1 gives the same score.
    """
    n_thr = int(np.floor(1.0 / step + 1e-9)) + 1
    thr = np.arange(n_thr) * step
    # bin(v) = number of thresholds <= v minus one; v >= thr[k] iff k <= bin(v)
    pos_bin = np.searchsorted(thr, sth, side="right") - 1
    tp_counts = np.bincount(pos_bin, minlength=n_thr)[::-1].cumsum()[::-1]  # #(Sth >= thr[k])
    n_split, n_neg = neg.shape
    neg_bin = np.searchsorted(thr, neg.ravel(), side="right") - 1
    offs = np.repeat(np.arange(n_split) * n_thr, n_neg)
    fp_counts = np.bincount(neg_bin + offs, minlength=n_split * n_thr).reshape(n_split, n_thr)
    fp_counts = fp_counts[:, ::-1].cumsum(axis=1)  # descending thresholds
    tp = np.concatenate(([0.0], tp_counts[::-1] / sth.size, [1.0]))
    tp = np.broadcast_to(tp, (n_split, n_thr + 2))
    zeros, ones = np.zeros((n_split, 1)), np.ones((n_split, 1))
    fp = np.concatenate((zeros, fp_counts / n_neg, ones), axis=1)
    return np.trapezoid(tp, fp, axis=1)


def _normalised_at_fixations(s: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The min-max normalised map, flat, and its values at the fixated pixels (None: constant map)."""
    sn = _minmax(s)
    if sn is None:
        return None
    flat = sn.ravel()
    return flat, flat[mask.ravel()]


def auc_borji(
    s: np.ndarray, fix: np.ndarray, n_splits: int = 100, step: float = 0.1, rng: RngLike = None
) -> float:
    """AUC-Borji (``AUC_Borji.m``): negatives = Nfix pixels drawn uniformly with replacement."""
    s, f = _prepare(s, fix, "fix")
    mask = f > 0
    if mask.sum() <= 1:  # the MIT code needs at least two fixated pixels
        return float("nan")
    scored = _normalised_at_fixations(s, mask)
    if scored is None:
        return float("nan")
    flat, sth = scored
    idx = _rng(rng).integers(0, flat.size, size=(n_splits, sth.size))
    return float(_split_aucs(sth, flat[idx], step).mean())


def sauc(
    s: np.ndarray,
    fix: np.ndarray,
    other_fix: np.ndarray,
    n_splits: int = 100,
    step: float = 0.1,
    rng: RngLike = None,
) -> float:
    """Shuffled AUC (``AUC_shuffled.m``): negatives drawn without replacement from ``other_fix > 0``.

    The caller builds ``other_fix`` (STAViS: fixations of the other frames of the same video with
    the current frame's fixated pixels removed); each split takes min(Nfix, available) of them.
    """
    s, f = _prepare(s, fix, "fix")
    other = _as2d(other_fix, "other_fix")
    if other.shape != f.shape:
        raise ValueError(f"other_fix shape {other.shape} differs from fix shape {f.shape}")
    mask = f > 0
    if not mask.any():
        return float("nan")
    scored = _normalised_at_fixations(s, mask)
    if scored is None:
        return float("nan")
    flat, sth = scored
    ind = np.flatnonzero(other.ravel() > 0)
    n_oth = min(sth.size, ind.size)
    if n_oth == 0:
        return float("nan")
    # the n_oth smallest of iid uniform keys = a uniform random subset without replacement
    keys = _rng(rng).random((n_splits, ind.size))
    pick = np.argpartition(keys, n_oth - 1, axis=1)[:, :n_oth] if n_oth < ind.size else None
    neg = flat[ind[pick]] if pick is not None else np.broadcast_to(flat[ind], (n_splits, ind.size))
    return float(_split_aucs(sth, np.ascontiguousarray(neg), step).mean())


ALL_METRICS = NAMES  # the table's names (sta_models.metric_table): cc, nss, sim, kld, auc_j, auc_b, sauc
