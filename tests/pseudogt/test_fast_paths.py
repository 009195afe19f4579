"""The fast paths of the pseudo-GT stages give exactly what the plain numpy steps give."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from sta_models import pseudogt as P
from sta_models.ave import AnnotationRow
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
    with h5py.File(path, "w") as f:
        f["cams"] = cams.astype(np.float16)
        f["seconds"] = np.asarray(seconds)
        f["pred_class"] = np.asarray(pred)
        f["pred_prob"] = np.full(len(seconds), 0.8, np.float32)
        f["true_prob"] = np.linspace(0.5, 0.9, len(seconds)).astype(np.float32)


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
