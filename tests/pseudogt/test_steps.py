"""Each pseudo-GT step on hand-built arrays whose answer is known (SPEC §5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sta_models import pseudogt as P
from sta_models.crop_files import crop_resize


def test_minmax_per_map_and_constant_maps() -> None:
    m = np.array([[[1.0, 3.0], [5.0, 9.0]], [[2.0, 2.0], [2.0, 2.0]]])
    out = P.minmax(m)
    np.testing.assert_allclose(out[0], [[0, 0.25], [0.5, 1.0]])  # (x-1)/8
    np.testing.assert_array_equal(out[1], 0.0)
    assert out.dtype == np.float32


def test_fusion_weights_follow_probabilities() -> None:
    m1 = np.array([[10.0, 0.0, 0.0]])  # min-max -> [1, 0, 0]
    m2 = np.array([[0.0, 0.0, 1.0]])
    maps = np.stack([m1, m2])
    # p = (.75, .25): Σ p·M = [.75, 0, .25]; the eps terms are affine, so min-max gives [1, 0, 1/3]
    f, has = P.fuse_maps(maps, np.array([0.75, 0.25]), np.array([True, True]))
    assert bool(has)
    np.testing.assert_allclose(f, [[1.0, 0.0, 1 / 3]], atol=1e-6)
    # swapping the probabilities swaps the weights: [1/3, 0, 1]
    f, _ = P.fuse_maps(maps, np.array([0.25, 0.75]), np.array([True, True]))
    np.testing.assert_allclose(f, [[1 / 3, 0.0, 1.0]], atol=1e-6)
    # only branch 2 selected the frame: branch 1 is ignored whatever its probability
    f, _ = P.fuse_maps(maps, np.array([0.99, 0.1]), np.array([False, True]))
    np.testing.assert_allclose(f, [[0.0, 0.0, 1.0]], atol=1e-6)


def test_fusion_over_time_and_unselected_frames() -> None:
    maps = np.random.default_rng(0).random((3, 4, 5, 6))  # [B, T, H, W]
    sel = np.array([[1, 0, 0, 1], [1, 0, 1, 0], [0, 0, 0, 1]], bool)
    probs = np.full((3, 4), 0.5)
    f, has = P.fuse_maps(maps, probs, sel)
    np.testing.assert_array_equal(has, [True, False, True, True])
    np.testing.assert_array_equal(f[1], 0.0)
    np.testing.assert_allclose(f[2], P.minmax(maps[1, 2]), atol=1e-5)  # one branch: its own map
    assert f.shape == (4, 5, 6)


def test_single_blob_gives_the_box_around_it() -> None:
    f = np.zeros((100, 120), np.float32)
    f[30:50, 40:70] = 1.0  # mean = 600/12000 = .05; 2·mean = .1 < 1 -> box at α = 2
    box, alpha = P.box_from_map(f, 2.0, 0.05, min_box=20)
    np.testing.assert_array_equal(box, [30, 40, 50, 70])
    assert float(alpha) == pytest.approx(2.0)


def test_nothing_above_threshold_lowers_alpha() -> None:
    # 0.6 everywhere and one pixel at 1: mean = .6 + .4/400 = .601. α ≥ 1.65 -> 1 < α·mean: empty;
    # 1.0 ≤ α < 1.65 -> only the peak (1x1, too small); α = .95 -> .571 < .6: every pixel
    f = np.full((20, 20), 0.6, np.float32)
    f[7, 9] = 1.0
    box, alpha = P.box_from_map(f, 2.0, 0.05, min_box=10)
    np.testing.assert_array_equal(box, [0, 0, 20, 20])
    assert float(alpha) == pytest.approx(0.95)
    # a smaller min box is met as soon as the peak appears (first α with α·.601 < 1 is 1.65)
    box, alpha = P.box_from_map(f, 2.0, 0.05, min_box=1)
    np.testing.assert_array_equal(box, [7, 9, 8, 10])
    assert float(alpha) == pytest.approx(1.65)


def test_gaussian_box_grows_until_min_box() -> None:
    yy, xx = np.mgrid[0:100, 0:120]
    f = np.exp(-((yy - 50) ** 2 + (xx - 60) ** 2) / (2 * 10.0**2)).astype(np.float32)
    box, alpha = P.box_from_map(f, 2.0, 0.05, min_box=40)
    y0, x0, y1, x1 = box.tolist()
    assert y1 - y0 >= 40 and x1 - x0 >= 40
    # reference: the same rule one α at a time
    a, m = 2.0, f.mean()
    while True:
        ys, xs = np.nonzero(f > np.float32(a) * m)
        if len(ys) and ys.max() + 1 - ys.min() >= 40 and xs.max() + 1 - xs.min() >= 40:
            break
        a = round(a - 0.05, 10)
    assert float(alpha) == pytest.approx(a)
    assert [y0, x0, y1, x1] == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
    assert (y0 + y1) / 2 == pytest.approx(50.5) and (x0 + x1) / 2 == pytest.approx(60.5)


def test_min_box_enforced_by_growing_the_last_box() -> None:
    # a 10x10 blob over zeros: for every α > 0 the box is the blob; 30 is never reached, so the
    # blob box grows around its centre (25, 10) to 30x30 and is clamped at the left edge
    f = np.zeros((60, 60), np.float32)
    f[20:30, 5:15] = 1.0
    box, alpha = P.box_from_map(f, 2.0, 0.05, min_box=30)
    np.testing.assert_array_equal(box, [10, 0, 40, 30])
    assert math.isnan(float(alpha))
    # an all-zero map gives the full frame; min_box larger than the frame is capped at the frame
    box, _ = P.box_from_map(np.zeros((20, 30), np.float32), min_box=100)
    np.testing.assert_array_equal(box, [0, 0, 20, 30])


def test_boxes_batch_equals_single() -> None:
    rng = np.random.default_rng(1)
    maps = rng.random((3, 32, 40)).astype(np.float32) ** 4
    boxes, alphas = P.box_from_map(maps, min_box=12)
    for i in range(3):
        b, a = P.box_from_map(maps[i], min_box=12)
        np.testing.assert_array_equal(boxes[i], b)
        assert alphas[i] == a


def test_box_smoothing_inside_the_event_only() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 12, 12], [3, 3, 15, 15], [6, 6, 18, 18], [0, 0, 99, 99]])
    in_event = np.array([False, True, True, True, False])
    out = P.smooth_boxes(boxes, in_event)
    # t=1: previous second is outside the event -> (b1 + b1 + b2)/3 = (1, 1, 13, 13)
    # t=2: (b1 + b2 + b3)/3 = (3, 3, 15, 15); t=3: (b2 + b3 + b3)/3 = (5, 5, 17, 17)
    np.testing.assert_array_equal(
        out, [[0, 0, 10, 10], [1, 1, 13, 13], [3, 3, 15, 15], [5, 5, 17, 17], [0, 0, 99, 99]]
    )
    assert out.dtype == np.int32
    # a one-second event keeps its box
    np.testing.assert_array_equal(P.smooth_boxes(boxes[:1], np.array([True])), boxes[:1])


def test_crop_resize_returns_the_box_content_at_full_size() -> None:
    frames = np.zeros((2, 40, 50, 3), np.uint8)
    frames[:, 10:20, 5:30] = (255, 0, 0)
    grad = np.tile(np.arange(50, dtype=np.uint8), (40, 1))
    frames[1, ..., 1] = grad
    out = crop_resize(frames, np.array([[10, 5, 20, 30], [0, 10, 40, 20]]))
    assert out.shape == (2, 40, 50, 3)
    np.testing.assert_array_equal(out[0, ..., 0], 255)
    np.testing.assert_array_equal(out[0, ..., 1:], 0)
    assert out[1, ..., 1].min() >= 10 and out[1, ..., 1].max() <= 19  # columns 10..19 stretched


def test_paste_geometry() -> None:
    cams = np.ones((1, 4, 4), np.float32)
    out = P.paste_maps(cams, np.array([[2, 3, 6, 9]]), (10, 12))
    expected = np.zeros((10, 12))
    expected[2:6, 3:9] = 1
    np.testing.assert_array_equal(out[0], expected)
    # left half of the CAM lit: after pasting into a 24-wide box the left 12 columns are lit
    half = np.zeros((1, 32, 32), np.float32)
    half[:, :, :16] = 1
    out = P.paste_maps(half, np.array([[16, 24, 32, 48]]), (64, 64))[0]
    np.testing.assert_array_equal(out[16:32, 24:36], 1)
    np.testing.assert_array_equal(out[16:32, 36:48], 0)
    assert out.sum() == 16 * 12


def test_temporal_smoothing_uses_present_neighbours() -> None:
    maps = np.stack([np.full((2, 2), v, np.float32) for v in (0.0, 3.0, 6.0, 9.0)])
    out = P.temporal_smooth(maps, [0, 1, 2, 4], window=3)
    # s0: (0+3)/2; s1: (0+3+6)/3; s2: (3+6)/2 (s3 has no map); s4: alone
    np.testing.assert_allclose(out[:, 0, 0], [1.5, 3.0, 4.5, 9.0])
    out5 = P.temporal_smooth(maps, [0, 1, 2, 3], window=5)
    # s0: (0+3+6)/3 = 3; s1: (0+3+6+9)/4 = 4.5; s2: 4.5; s3: (3+6+9)/3 = 6
    np.testing.assert_allclose(out5[:, 0, 0], [3.0, 4.5, 4.5, 6.0])
    np.testing.assert_array_equal(P.temporal_smooth(maps, [0, 1, 2, 4], window=1), maps)


def test_sparsify_zeroes_below_factor_times_mean() -> None:
    m = np.array([[[0.0, 1.0, 2.0, 7.0]]])
    # min-max [0, 1/7, 2/7, 1], mean = 10/28 = .357; factor .5 -> thr .179: 1/7 goes, 2/7 stays
    np.testing.assert_allclose(P.sparsify(m, 0.5), [[[0, 0, 2 / 7, 1]]], atol=1e-6)
    # factor 3 -> thr = min(1.07, max=1): only the peak survives, the map is never all zero
    np.testing.assert_allclose(P.sparsify(m, 3.0), [[[0, 0, 0, 1]]], atol=1e-6)
