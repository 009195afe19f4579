"""Metric values against small cases worked out by hand, invariances and undefined cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sta_models import metrics as M


def test_cc_hand_case() -> None:
    # s - mean = [-1.5, -.5, .5, 1.5], g - mean = [-.5, -.5, .5, .5]
    # Σ prod = .75 + .25 + .25 + .75 = 2; Σs² = 5; Σg² = 1 -> cc = 2 / sqrt(5)
    s = np.array([[1.0, 2.0], [3.0, 4.0]])
    g = np.array([[0.0, 0.0], [1.0, 1.0]])
    assert M.cc(s, g) == pytest.approx(2 / math.sqrt(5), abs=1e-12)
    assert M.cc(g, g) == pytest.approx(1.0)
    assert M.cc(-g, g) == pytest.approx(-1.0)


def test_nss_hand_case_uses_ddof1_and_counts_pixels_once() -> None:
    # mean 2.5, std(ddof=1) = sqrt(5/3); fixation on the 4 -> 1.5 / sqrt(5/3) = 1.1618950
    s = np.array([[1.0, 2.0], [3.0, 4.0]])
    fix = np.array([[0, 0], [0, 1]])
    assert M.nss(s, fix) == pytest.approx(1.5 / math.sqrt(5 / 3), abs=1e-12)
    # fixations on 3 and 4: mean(0.5, 1.5) / sqrt(5/3) = 0.7745967; a count of 5 on a pixel is still once
    fix2 = np.array([[0, 0], [1, 5]])
    assert M.nss(s, fix2) == pytest.approx(1.0 / math.sqrt(5 / 3), abs=1e-12)


def test_sim_hand_case() -> None:
    # s -> minmax [0, 1/3, 2/3, 1] / 2 = [0, 1/6, 1/3, 1/2]; g -> [0, 0, 0, 1]; Σmin = 1/2
    s = np.array([[0.0, 1.0], [2.0, 3.0]])
    g = np.array([[0.0, 0.0], [0.0, 1.0]])
    assert M.sim(s, g) == pytest.approx(0.5, abs=1e-12)
    # an all-zero prediction stays zero: Σmin = 0 (not NaN)
    assert M.sim(np.zeros((2, 2)), g) == 0.0


def test_kld_hand_case() -> None:
    # p = 1/4 everywhere, q = [0, 0, 1/2, 1/2] -> Σ q log(eps + q/(p+eps)) = log(2 + eps) ≈ 0.6931472
    s = np.ones((2, 2))
    g = np.array([[0.0, 0.0], [1.0, 1.0]])
    assert M.kld(s, g) == pytest.approx(math.log(2.0), abs=1e-12)


def test_auc_judd_hand_case() -> None:
    # S = [0, .25, .5, .75, 1], fixations on 1 and .25; N = 5, Nfix = 2
    # t=1:   tp=1/2, fp=(1-1)/3 = 0
    # t=.25: tp=1,   fp=(4-2)/3 = 2/3
    # ROC (0,0) (0,.5) (2/3,1) (1,1): area = 0 + 2/3*.75 + 1/3*1 = 5/6
    s = np.array([[0.0, 1.0, 2.0, 3.0, 4.0]])
    fix = np.array([[0, 1, 0, 0, 1]])
    assert M.auc_judd(s, fix) == pytest.approx(5 / 6, abs=1e-12)


def test_sauc_hand_case_with_deterministic_negatives() -> None:
    # S = [0, .25, .5, .75, 1]; positives {1, .5}; other fixations {0, .75} (exactly Nfix of them,
    # so every split takes both). Thresholds 1.0 … 0.0 step .1:
    #   t in [.8, 1]:  tp=.5, fp=0;  t in [.6, .7]: tp=.5, fp=.5;  t in [.1, .5]: tp=1, fp=.5;  t=0: 1, 1
    # area = .5*.5 (0->.5 at tp .5) + .5*1 (.5->1 at tp 1) = .75
    s = np.array([[0.0, 1.0, 2.0, 3.0, 4.0]])
    fix = np.array([[0, 0, 1, 0, 1]])
    other = np.array([[1, 0, 0, 1, 0]])
    assert M.sauc(s, fix, other, n_splits=7, rng=1) == pytest.approx(0.75, abs=1e-12)
    # every other fixation scores above every positive -> fp reaches 1 before tp rises: area 0
    assert M.sauc(4 - s, fix, other, n_splits=3) == pytest.approx(0.25, abs=1e-12)


def _borji_reference(s, fix, n_splits, step, rng):
    """Direct port of AUC_Borji.m (loops), drawing the same random indices."""
    s = (s - s.min()) / (s.max() - s.min())
    flat, f = s.ravel(), fix.ravel() > 0
    sth = flat[f]
    idx = rng.integers(0, flat.size, size=(n_splits, sth.size))
    aucs = []
    for k in range(n_splits):
        cur = flat[idx[k]]
        top = max(sth.max(), cur.max())
        thr = [i * step for i in range(int(np.floor(top / step + 1e-9)) + 1)][::-1]
        tp = [0.0] + [np.sum(sth >= t) / sth.size for t in thr] + [1.0]
        fp = [0.0] + [np.sum(cur >= t) / sth.size for t in thr] + [1.0]
        aucs.append(np.trapezoid(tp, fp))
    return float(np.mean(aucs))


def _judd_reference(s, fix):
    """Direct port of AUC_Judd.m without jitter (one threshold at a time)."""
    s = (s - s.min()) / (s.max() - s.min())
    flat, f = s.ravel(), fix.ravel() > 0
    sth = np.sort(flat[f])[::-1]
    n, nf = flat.size, sth.size
    tp, fp = [0.0], [0.0]
    for i, t in enumerate(sth, start=1):
        tp.append(i / nf)
        fp.append((np.sum(flat >= t) - i) / (n - nf))
    return float(np.trapezoid(tp + [1.0], fp + [1.0]))


def test_split_aucs_and_judd_match_loop_ports_of_the_matlab_code() -> None:
    rng = np.random.default_rng(3)
    s = rng.random((20, 30)) ** 3
    s[5:8, 5:8] = s[5, 5]  # ties
    fix = (rng.random((20, 30)) > 0.9).astype(np.uint8)
    assert M.auc_borji(s, fix, n_splits=25, rng=np.random.default_rng(7)) == pytest.approx(
        _borji_reference(s, fix, 25, 0.1, np.random.default_rng(7)), abs=1e-12
    )
    assert M.auc_judd(s, fix) == pytest.approx(_judd_reference(s, fix), abs=1e-12)


def test_affine_invariance_of_cc_and_nss() -> None:
    rng = np.random.default_rng(0)
    s, g = rng.random((12, 16)), rng.random((12, 16))
    fix = (g > 0.8).astype(np.uint8)
    for a, b in [(3.0, 5.0), (0.01, -2.0)]:
        assert M.cc(a * s + b, g) == pytest.approx(M.cc(s, g), abs=1e-12)
        assert M.nss(a * s + b, fix) == pytest.approx(M.nss(s, fix), abs=1e-12)
    # AUCs depend only on the order of values after min-max
    assert M.auc_judd(2 * s + 1, fix) == pytest.approx(M.auc_judd(s, fix), abs=1e-12)


def test_perfect_prediction() -> None:
    yy, xx = np.mgrid[0:40, 0:50]
    g = np.exp(-((yy - 20) ** 2 + (xx - 30) ** 2) / (2 * 5.0**2))
    fix = (g > 0.9).astype(np.uint8)
    assert M.sim(g, g) == pytest.approx(1.0, abs=1e-12)
    assert M.kld(g, g) == pytest.approx(0.0, abs=1e-12)
    assert M.cc(g, g) == pytest.approx(1.0, abs=1e-12)
    assert M.auc_judd(g, fix) > 0.99
    assert M.auc_borji(g, fix) > 0.95
    # MIT tie quirk, kept on purpose: a binary prediction of exactly the fixations [1, 1, 0, 0]
    # gives i=1: tp=.5, fp=(2-1)/2=.5; i=2: tp=1, fp=0 -> (0,0) (.5,.5) (0,1) (1,1)
    # trapz = .5*(0+.5)/2 - .5*(.5+1)/2 + 1*(1+1)/2 = .125 - .375 + 1 = 0.75 (jitter breaks such ties)
    b = np.array([[1.0, 1.0, 0.0, 0.0]])
    assert M.auc_judd(b, b) == pytest.approx(0.75, abs=1e-12)
    assert M.auc_judd(b, b, jitter=True, rng=0) == pytest.approx(1.0, abs=1e-12)


def test_prediction_is_resized_to_gt_size() -> None:
    g = np.zeros((40, 60))
    g[10:30, 20:40] = 1.0
    small = g[::2, ::2]  # 20x30 copy of the same map
    assert M.cc(small, g) > 0.9
    assert M.nss(small, g) > 1.0


def test_undefined_cases_give_nan() -> None:
    g = np.random.default_rng(0).random((8, 8))
    fix = (g > 0.5).astype(np.uint8)
    flat = np.full((8, 8), 0.3)
    none = np.zeros((8, 8))
    for value in (
        M.cc(flat, g),
        M.nss(flat, fix),
        M.sim(flat, g),
        M.kld(none, g),
        M.auc_judd(flat, fix),
        M.auc_borji(flat, fix),
        M.sauc(flat, fix, 1 - fix),
        M.nss(g, none),
        M.auc_judd(g, none),
        M.auc_borji(g, none),
        M.sauc(g, none, fix),
        M.sauc(g, fix, none),  # no negatives
        M.auc_judd(g, np.ones((8, 8))),  # no non-fixated pixel
    ):
        assert math.isnan(value)
    one = np.zeros((8, 8))
    one[2, 2] = 1
    assert math.isnan(M.auc_borji(g, one))  # MIT needs at least two fixated pixels


def test_wrong_dimensions_raise() -> None:
    with pytest.raises(ValueError, match="2-D"):
        M.cc(np.zeros((2, 2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="2-D"):
        M.nss(np.zeros((4, 4)), np.zeros(16))
    with pytest.raises(ValueError, match="other_fix"):
        M.sauc(np.ones((4, 4)), np.eye(4), np.zeros((3, 3)))


def test_random_metrics_are_seeded() -> None:
    rng = np.random.default_rng(1)
    s = rng.random((30, 30))
    fix = (rng.random((30, 30)) > 0.95).astype(np.uint8)
    other = (rng.random((30, 30)) > 0.9).astype(np.uint8)
    assert M.auc_borji(s, fix, rng=5) == M.auc_borji(s, fix, rng=5)
    assert M.sauc(s, fix, other, rng=5) == M.sauc(s, fix, other, rng=5)
    assert M.auc_judd(s, fix, jitter=True, rng=5) == M.auc_judd(s, fix, jitter=True, rng=5)
    assert M.auc_borji(s, fix) == M.auc_borji(s, fix)  # rng=None is a fixed seed
    assert M.auc_borji(s, fix, rng=5) != M.auc_borji(s, fix, rng=6)
    # a random prediction sits near chance
    assert abs(M.auc_borji(s, fix, rng=5) - 0.5) < 0.1
    assert isinstance(M.cc(s, s), float)
