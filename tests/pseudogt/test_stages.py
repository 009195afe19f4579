"""Both pseudo-GT stages end to end on hand-written CAM and feature files."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from sta_models import pseudogt as P
from sta_models.ave import AnnotationRow
from sta_models.config import PseudoGTConfig
from sta_models.datasets import FeatureDataset

ROW = AnnotationRow(category="Bark", category_id=2, video_id="vid", start=1, end=5, line=2)
H = W = 64
BOX = [16, 24, 32, 48]  # the red object, in frame pixels


def _cam_file(path: Path, cams: np.ndarray, seconds, pred_class, true_prob) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["cams"] = cams.astype(np.float16)
        f["seconds"] = np.asarray(seconds)
        f["pred_class"] = np.asarray(pred_class)
        f["pred_prob"] = np.asarray(true_prob, np.float32)
        f["true_prob"] = np.asarray(true_prob, np.float32)


@pytest.fixture()
def coarse(tmp_path: Path) -> dict[str, Path]:
    frames = np.zeros((6, H, W, 3), np.uint8)
    frames[..., 2] = 200  # blue background
    frames[:, 16:32, 24:48] = (255, 0, 0)
    feat = tmp_path / "features"
    feat.mkdir()
    with h5py.File(feat / "vid.h5", "w") as f:
        f["frames"] = frames
        f["audio"] = np.arange(6 * 81 * 199, dtype=np.float32).reshape(6, 81, 199)
        f["audio_valid"] = np.array([1, 1, 1, 0, 1, 1], bool)
        f.attrs["video_id"] = "vid"
        f.attrs["fps"] = 25.0
    blob = np.zeros((4, H, W), np.float32)
    blob[:, 16:32, 24:48] = 1.0  # coarse CAM = the object; canvas = frame size
    noise = blob * 0.5 + 0.01
    dirs = {b: tmp_path / f"cams_coarse_{b}" for b in ("s", "sa", "st")}
    # second 4: s and sa both wrong -> no selecting branch -> plain average; st: no file at all
    _cam_file(dirs["s"] / f"{ROW.key}.h5", blob, [1, 2, 3, 4], [2, 2, 2, 7], [0.9, 0.9, 0.9, 0.1])
    _cam_file(dirs["sa"] / f"{ROW.key}.h5", noise, [1, 2, 3, 4], [2, 2, 5, 5], [0.8, 0.8, 0.2, 0.2])
    return {"features": feat, **{f"cam_{b}": d for b, d in dirs.items()}}


def test_coarse_boxes_and_crops(coarse: dict[str, Path], tmp_path: Path) -> None:
    cam_dirs = {b: coarse[f"cam_{b}"] for b in ("s", "sa", "st")}
    out = tmp_path / "crops"
    summary = P.coarse_boxes_and_crops(cam_dirs, [ROW], coarse["features"], out, PseudoGTConfig(min_box=8))
    assert summary["written"] == 1
    assert summary["box_sources"] == {"fused selected branches": 3, "average of unselected CAMs": 1}
    with h5py.File(out / f"{ROW.key}.h5", "r") as f:
        assert "frames" not in f and "audio" not in f and f.attrs["crop_format"] == 2  # boxes, not pixels
        assert f.attrs["n_frames"] == 6 and f.attrs["features"] == "../features/vid.h5"
        boxes = f["boxes"][()]
        assert boxes.dtype == np.int32
        np.testing.assert_array_equal(boxes[1:5], [BOX] * 4)
        np.testing.assert_array_equal(boxes[[0, 5]], [[0, 0, H, W]] * 2)
        np.testing.assert_array_equal(f["has_box"][()], [0, 1, 1, 1, 1, 0])
        np.testing.assert_array_equal(f["box_source"][()], [0, 1, 1, 1, 2, 0])
        np.testing.assert_array_equal(f["audio_valid"][()], [1, 1, 1, 0, 1, 1])
        assert f.attrs["video_id"] == "vid" and f.attrs["fps"] == 25.0 and f.attrs["row_key"] == ROW.key
    ds = FeatureDataset([ROW], out, "sa", H, skip_invalid_audio=False)  # how the fine stage reads them
    frames = ds.frames_at(0, list(range(6)))
    item = ds[2]  # second 3
    assert item["second"] == 3 and torch.equal(item["image"], torch.from_numpy(frames[3]).permute(2, 0, 1))
    np.testing.assert_array_equal(item["audio"][0].numpy(), np.arange(3 * 81 * 199, 4 * 81 * 199).reshape(81, 199))
    assert sorted(p.name for p in (out / "previews").glob("*.png")) == [f"{ROW.key}_s{s:03d}.png" for s in (1, 2, 3)]
    # event seconds: the crop is the red object stretched to the whole frame; others untouched
    np.testing.assert_array_equal(frames[1:5, ..., 0], 255)
    np.testing.assert_array_equal(frames[1:5, ..., 1:], 0)
    assert frames[0, 0, 0].tolist() == [0, 0, 200] and frames[5, 20, 30].tolist() == [255, 0, 0]


def test_fuse_pseudo_gt(coarse: dict[str, Path], tmp_path: Path) -> None:
    cfg = PseudoGTConfig(min_box=8)
    coarse_dirs = {b: coarse[f"cam_{b}"] for b in ("s", "sa", "st")}
    crops = tmp_path / "crops"
    P.coarse_boxes_and_crops(coarse_dirs, [ROW], coarse["features"], crops, cfg)
    left = np.zeros((4, 32, 32), np.float32)
    left[..., :16] = 1.0  # fine CAMs on the crop, canvas 32: left half of the object
    right = left[..., ::-1].copy()
    fine = {b: tmp_path / f"cams_fine_{b}" for b in ("s", "sa", "st")}
    _cam_file(fine["s"] / f"{ROW.key}.h5", left, [1, 2, 3, 4], [2, 2, 2, 0], [0.9, 0.9, 0.9, 0.1])
    _cam_file(fine["sa"] / f"{ROW.key}.h5", left, [1, 2, 3, 4], [2, 2, 0, 0], [0.8, 0.8, 0.1, 0.1])
    _cam_file(fine["st"] / f"{ROW.key}.h5", right[:2], [2, 3], [2, 2], [0.5, 0.5])
    out = tmp_path / "pgt"
    summary = P.fuse_pseudo_gt(fine, crops, [ROW], out, cfg)
    assert summary["maps"] == 3
    with h5py.File(out / f"{ROW.key}.h5", "r") as f:
        maps, secs = f["maps"][()], f["seconds"][()]
    assert maps.dtype == np.float16 and maps.shape == (3, H, W)
    assert secs.dtype == np.int32 and secs.tolist() == [1, 2, 3]
    # Fused per second (L = left half of the box at cols 24:36, R = right half at 36:48):
    #   F1 = s+sa: L 1, R 0;  F2 = s .9 L + sa .8 L + st .5 R: L 1, R .5/1.7;  F3 = s + st: L 1, R .5/.9
    # smoothed (window 3, truncated at the edges): R1 = (0 + .2941)/2 = .1471 -> 3·mean = 3·(192·1.1471)/4096
    #   = .161 > .147: zeroed; R2 = (0 + .2941 + .5556)/3 = .2832 (kept, thr .180); R3 = (.2941+.5556)/2 = .4248
    r2, r3 = (0.5 / 1.7 + 0.5 / 0.9) / 3, (0.5 / 1.7 + 0.5 / 0.9) / 2
    for m, r in zip(maps.astype(np.float32), (0.0, r2, r3), strict=True):
        np.testing.assert_allclose(m[16:32, 24:36], 1.0, atol=1e-3)
        np.testing.assert_allclose(m[16:32, 36:48], r, atol=1e-3)
        outside = m.copy()
        outside[16:32, 24:48] = 0
        assert not outside.any()
    report = json.loads((out / "report.json").read_text())
    row = report["rows"][ROW.key]
    assert row["seconds"] == [1, 2, 3]
    assert list(row["without"]) == ["4"] and row["without"]["4"].startswith("no branch selected it")
    assert "st: no CAM" in row["without"]["4"]
    assert len(list((out / "previews").glob(f"{ROW.key}_s*.png"))) == 3


def test_fuse_reports_short_events_and_missing_audio(coarse: dict[str, Path], tmp_path: Path) -> None:
    short = AnnotationRow(category="Bark", category_id=2, video_id="vid", start=2, end=4, line=3)
    cfg = PseudoGTConfig(min_box=8)
    blob = np.zeros((2, H, W), np.float32)
    blob[:, 16:32, 24:48] = 1
    cdirs = {b: tmp_path / f"c_{b}" for b in ("s", "sa", "st")}
    _cam_file(cdirs["s"] / f"{short.key}.h5", blob, [2, 3], [2, 2], [0.9, 0.9])
    P.coarse_boxes_and_crops(cdirs, [short], coarse["features"], tmp_path / "crops", cfg)
    fdirs = {b: tmp_path / f"f_{b}" for b in ("s", "sa", "st")}
    _cam_file(fdirs["s"] / f"{short.key}.h5", blob[:, :32, :32], [2, 3], [2, 0], [0.9, 0.1])
    _cam_file(fdirs["sa"] / f"{short.key}.h5", blob[:1, :32, :32], [2], [1], [0.1])  # s3 has no audio
    P.fuse_pseudo_gt(fdirs, tmp_path / "crops", [short], tmp_path / "pgt", cfg)
    report = json.loads((tmp_path / "pgt" / "report.json").read_text())
    row = report["rows"][short.key]
    assert row["seconds"] == [2]
    assert row["without"]["3"] == "no branch selected it; sa: no audio; st: event too short"
