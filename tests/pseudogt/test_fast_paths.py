"""The fast paths of the pseudo-GT stages give what the plain numpy steps and SPEC formulas give."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np

from sta_models import pseudogt as P
from sta_models.ave import AnnotationRow
from sta_models.cam_files import read_cam_file, write_cam_file
from sta_models.config import PseudoGTConfig


def test_float16_conversions_match_numpy_bit_for_bit() -> None:
    every_half = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    ref = every_half.astype(np.float32)
    got = P.to_float32(every_half)
    assert got.dtype == np.float32 and got.shape == ref.shape
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])  # ±0, subnormals, ±inf
    out = np.full((256, 256), 7.0, np.float32)
    assert P.to_float32(every_half, out=out) is out
    np.testing.assert_array_equal(out.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])
    # float32 → float16: round to nearest even at every tie between two halves, and around them
    finite = np.sort(ref[np.isfinite(ref)].ravel())
    ties = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)
    rng = np.random.default_rng(0)
    x = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)),
                        rng.random(100_000, dtype=np.float32), np.float32([0.0, -0.0, 65504.0, 65520.0, 1e-8])])
    x = x[: len(x) // 64 * 64].reshape(-1, 8, 8)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(P.to_float16(x).view(np.uint16), x.astype(np.float16).view(np.uint16))
    # non-contiguous and empty inputs, other dtypes
    np.testing.assert_array_equal(P.to_float32(every_half[:, ::3]), ref[:, ::3])
    assert P.to_float32(np.zeros((0, 4, 4), np.float16)).shape == (0, 4, 4)
    assert P.to_float32(np.ones((2, 2), np.float64)).dtype == np.float32
    assert P.to_float32(np.float16(1.5)) == 1.5 and P.to_float16(np.float32(2.5)) == 2.5  # 0-d
    strided = np.zeros((256, 512), np.float32)[:, ::2]  # not contiguous: still filled
    assert P.to_float32(every_half, out=strided) is strided
    np.testing.assert_array_equal(strided[~nan], ref[~nan])


def _dense_smooth(maps: np.ndarray, seconds: list[int], window: int) -> np.ndarray:
    """The plain version: a zero-padded dense timeline, ``window`` gathered sums."""
    m = np.asarray(maps, np.float32)
    secs = np.asarray(seconds)
    half = window // 2
    pos = secs - secs.min() + half
    dense = np.zeros((int(pos.max()) + half + 1,) + m.shape[1:], np.float32)
    count = np.zeros(len(dense), np.float32)
    dense[pos], count[pos] = m, 1
    total, n = np.zeros_like(m), np.zeros(len(m), np.float32)
    for k in range(-half, half + 1):
        total += dense[pos + k]
        n += count[pos + k]
    return total / n[:, None, None]


def test_temporal_smoothing_of_consecutive_seconds_equals_the_dense_version() -> None:
    maps = np.random.default_rng(1).random((7, 9, 11)).astype(np.float32)
    for seconds in ([3, 4, 5, 6, 7, 8, 9], [0, 1, 2, 4, 5, 8, 9]):
        for window in (2, 3, 5, 9):
            np.testing.assert_array_equal(P.temporal_smooth(maps, seconds, window), _dense_smooth(maps, seconds, window))
    one = P.temporal_smooth(maps[:1], [4], 3)
    np.testing.assert_array_equal(one, maps[:1])


def _cams(path: Path, cams: np.ndarray, seconds: list[int], pred: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    prob = np.linspace(0.5, 0.9, len(seconds)).astype(np.float32)
    write_cam_file(path, {"cams": list(cams), "seconds": seconds, "pred_class": pred,
                          "pred_prob": np.full(len(seconds), 0.8, np.float32), "true_prob": prob},
                   {"canvas": cams.shape[-1]})


def _spec_fusion(maps: np.ndarray, probs: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """SPEC §5 literally: F = minmax((Σ p_b·M_b + eps) / (Σ p_b + eps)), M_b = minmax(C_b), in float64."""
    def mm(x: np.ndarray) -> np.ndarray:
        span = x.max() - x.min()
        return (x - x.min()) / span if span > 0 else np.zeros_like(x)

    m = np.stack([mm(c.astype(np.float64)) for c in maps])
    return mm((np.tensordot(probs, m, axes=1) + eps) / (probs.sum() + eps))


def test_fusion_equals_the_spec_formula() -> None:
    """The min-max that ends the formula cancels ε, the denominator and each branch's offset."""
    rng = np.random.default_rng(3)
    for trial in range(40):
        n = int(rng.integers(1, 4))
        maps = rng.random((n, 17, 23)).astype(np.float32) * rng.uniform(0.1, 50, (n, 1, 1)).astype(np.float32)
        maps += rng.uniform(-5, 5, (n, 1, 1)).astype(np.float32)
        if trial % 5 == 0:
            maps[0] = 3.0  # a constant branch map contributes nothing
        probs = rng.uniform(0.05, 1.0, n)
        out = np.empty((17, 23), np.float32)
        got = P.fuse_frame(list(maps), probs.tolist(), out)
        assert got is out
        np.testing.assert_allclose(out, _spec_fusion(maps, probs), atol=2e-6)
        assert out.min() == 0.0 or not out.any()
    # no usable branch: all-zero F (no weight, or only constant maps)
    np.testing.assert_array_equal(P.fuse_frame([np.ones((3, 3), np.float32)], [0.9], out[:3, :3]), 0.0)
    np.testing.assert_array_equal(P.fuse_frame([np.ones((3, 3), np.float32)], [0.0], out[:3, :3]), 0.0)


def test_sparsify_keeps_pixels_equal_to_the_threshold() -> None:
    m = np.array([[[0.0, 0.5, 0.5, 1.0]]], np.float32)  # mean .5: factor 1 -> thr .5, kept (zero *below*)
    np.testing.assert_array_equal(P.sparsify(m, 1.0), m)
    np.testing.assert_array_equal(P.sparsify(m, 1.01), [[[0, 0, 0, 1]]])


def test_cam_files_keep_native_maps_and_read_back_at_the_canvas(tmp_path: Path) -> None:
    cams = np.random.default_rng(4).random((3, 6, 6)).astype(np.float32) * 7
    path = tmp_path / "r.h5"
    write_cam_file(path, {"cams": list(cams), "seconds": [4, 5, 6], "pred_class": [1, 2, 3],
                          "pred_prob": [0.5] * 3, "true_prob": [0.25, 0.5, 0.75]}, {"branch": "s", "canvas": 20})
    with h5py.File(path) as f:
        assert f["cams_native"].shape == (3, 6, 6) and f["cams_native"].dtype == np.float16
        assert f.attrs["cam_format"] == 2 and f.attrs["branch"] == "s" and "cams" not in f
    buf = np.zeros((5, 20, 20), np.float16)
    got = read_cam_file(path, alloc=lambda shape, dtype: buf[: shape[0]])
    assert got is not None and np.shares_memory(got.cams, buf)
    up = np.stack([cv2.resize(c, (20, 20), interpolation=cv2.INTER_LINEAR) for c in cams])
    want = up / (up.reshape(3, -1).max(1)[:, None, None] + 1e-8)
    np.testing.assert_allclose(got.cams.astype(np.float32), want, atol=1e-3)  # float16 rounding
    assert got.seconds.tolist() == [4, 5, 6] and got.pred_class.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(got.true_prob, np.float32([0.25, 0.5, 0.75]))
    np.testing.assert_array_equal(read_cam_file(path).cams, got.cams)
    f32 = read_cam_file(path, dtype=np.float32).cams  # unrounded: what the pseudo-GT stages read
    assert f32.dtype == np.float32 and np.abs(f32 - want).max() < 1e-3
    np.testing.assert_array_equal(f32.astype(np.float16), got.cams)
    assert read_cam_file(tmp_path / "missing.h5") is None
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary left


def _reference_pseudo_gt(coarse: Path, fine: Path, frames: np.ndarray, row: AnnotationRow,
                         cfg: PseudoGTConfig) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and pseudo-GT maps of one row from plain numpy steps and the literal fusion formula."""
    def load(root: Path) -> dict[str, tuple]:
        out = {}
        for b in ("s", "sa", "st"):
            c = read_cam_file(root / b / f"{row.key}.h5")
            assert c is not None
            out[b] = (c.cams.astype(np.float32), c.pred_class, c.true_prob)
        return out

    h, w = frames.shape[1:3]
    c = load(coarse)
    fused = []
    for j in range(len(row.seconds)):
        sel = [b for b in c if c[b][1][j] == row.category_id]
        fused.append(_spec_fusion(np.stack([c[b][0][j] for b in sel]), np.array([c[b][2][j] for b in sel])))
    boxes, _ = P.box_from_map(np.stack(fused).astype(np.float32), cfg.alpha_start, cfg.alpha_step, cfg.min_box)
    full = np.tile([0, 0, h, w], (len(frames), 1))
    full[list(row.seconds)] = boxes
    in_event = np.isin(np.arange(len(frames)), list(row.seconds))
    boxes = P.smooth_boxes(full, in_event)[list(row.seconds)]
    f = load(fine)
    fine_fused = []
    for j in range(len(row.seconds)):
        sel = [b for b in f if f[b][1][j] == row.category_id]
        pasted = P.paste_maps(np.stack([f[b][0][j] for b in sel]), np.stack([boxes[j]] * len(sel)), (h, w))
        fine_fused.append(_spec_fusion(pasted, np.array([f[b][2][j] for b in sel])))
    smoothed = P.temporal_smooth(np.stack(fine_fused).astype(np.float32), list(row.seconds), cfg.smooth_window)
    return boxes, P.sparsify(smoothed, cfg.sparsify_factor)


def test_stages_equal_plain_steps_and_the_spec_formula(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    h = w = 40
    feat = tmp_path / "features"
    feat.mkdir()
    frames = rng.integers(0, 255, (7, h, w, 3), dtype=np.uint8)
    with h5py.File(feat / "v.h5", "w") as f:
        f["frames"] = frames
        f["audio"] = np.zeros((7, 81, 199), np.float32)
        f["audio_valid"] = np.ones(7, bool)
    row = AnnotationRow("Bark", 2, "v", 1, 7, 2)
    yy, xx = np.mgrid[0:h, 0:w]
    for stage, size in (("coarse", h), ("fine", 24)):
        for b in ("s", "sa", "st"):
            cy, cx = rng.uniform(10, 30, 2) * size / h
            blob = np.exp(-((yy[:size, :size] - cy) ** 2 + (xx[:size, :size] - cx) ** 2) / (2 * 5.0**2))
            cams = blob[None] * rng.uniform(0.5, 1, (6, 1, 1)) + 0.1 * rng.random((6, size, size))
            _cams(tmp_path / stage / b / f"{row.key}.h5", cams, list(range(1, 7)), [2] * 6)
    cfg = PseudoGTConfig(min_box=12)
    dirs = lambda root: {b: root / b for b in ("s", "sa", "st")}  # noqa: E731
    P.coarse_boxes_and_crops(dirs(tmp_path / "coarse"), [row], feat, tmp_path / "crops", cfg)
    P.fuse_pseudo_gt(dirs(tmp_path / "fine"), tmp_path / "crops", [row], tmp_path / "pgt", cfg)
    boxes, maps = _reference_pseudo_gt(tmp_path / "coarse", tmp_path / "fine", frames, row, cfg)
    with h5py.File(tmp_path / "crops" / f"{row.key}.h5") as f:
        np.testing.assert_array_equal(f["boxes"][1:7], boxes)
    with h5py.File(tmp_path / "pgt" / f"{row.key}.h5") as f:
        got = f["maps"][()].astype(np.float32)
    assert got.shape == maps.shape == (6, h, w)
    np.testing.assert_allclose(got, maps, atol=1e-3)  # float16 storage: half an ulp at 1 is 2.4e-4
    assert ((got > 0) == (maps > 0)).mean() > 0.999  # the same support after sparsification


def test_rows_processed_together_equal_rows_processed_alone(tmp_path: Path) -> None:
    """Buffers reused from row to row must not carry values over (a branch missing in row 2)."""
    rng = np.random.default_rng(2)
    h = w = 48
    feat = tmp_path / "features"
    feat.mkdir()
    with h5py.File(feat / "v.h5", "w") as f:
        f["frames"] = rng.integers(0, 255, (6, h, w, 3), dtype=np.uint8)
        f["audio"] = np.zeros((6, 81, 199), np.float32)
        f["audio_valid"] = np.ones(6, bool)
        f.attrs["video_id"] = "v"
    rows = [AnnotationRow("Bark", 2, "v", 0, 4, 2), AnnotationRow("Dog", 3, "v", 1, 5, 3)]  # same length
    coarse, fine = tmp_path / "coarse", tmp_path / "fine"
    yy, xx = np.mgrid[0:h, 0:w]

    def blobs(n: int, cy: float, cx: float) -> np.ndarray:  # different boxes in the two rows
        g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2))
        return g[None] + 0.05 * rng.random((n, h, w))

    for b in ("s", "sa", "st"):
        _cams(coarse / b / f"{rows[0].key}.h5", blobs(4, 12, 14), list(range(4)), [2, 2, 2, 5])
        _cams(fine / b / f"{rows[0].key}.h5", rng.random((4, 16, 16)), list(range(4)), [2, 2, 5, 2])
        if b != "sa":  # row 2: no SA files, and second 3 missing from S
            secs = [1, 2, 4] if b == "s" else [1, 2, 3, 4]
            _cams(coarse / b / f"{rows[1].key}.h5", blobs(len(secs), 34, 30), secs, [3] * len(secs))
            _cams(fine / b / f"{rows[1].key}.h5", rng.random((len(secs), 16, 16)), secs, [3] * len(secs))
    cfg = PseudoGTConfig(min_box=12)
    dirs = lambda root: {b: root / b for b in ("s", "sa", "st")}  # noqa: E731
    outs = {}
    for name, batch in (("together", rows), ("alone0", rows[:1]), ("alone1", rows[1:])):
        P.coarse_boxes_and_crops(dirs(coarse), batch, feat, tmp_path / name / "crops", cfg)
        P.fuse_pseudo_gt(dirs(fine), tmp_path / name / "crops", batch, tmp_path / name / "pgt", cfg)
        outs[name] = tmp_path / name
    for i, row in enumerate(rows):
        for stage in ("crops", "pgt"):
            with h5py.File(outs["together"] / stage / f"{row.key}.h5") as a, \
                    h5py.File(outs[f"alone{i}"] / stage / f"{row.key}.h5") as b:
                assert sorted(a) == sorted(b)
                for k in a:
                    np.testing.assert_array_equal(a[k][()], b[k][()])
    with h5py.File(outs["together"] / "pgt" / f"{rows[1].key}.h5") as f:
        assert f["seconds"][()].tolist() == [1, 2, 3, 4] and f["maps"].dtype == np.float16
    with h5py.File(outs["together"] / "crops" / f"{rows[0].key}.h5") as a, \
            h5py.File(outs["together"] / "crops" / f"{rows[1].key}.h5") as b:
        assert (a["boxes"][1:4] != b["boxes"][1:4]).any(axis=1).all()  # the pasted regions differ
