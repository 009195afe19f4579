"""Crop files of format 2 (boxes; the dataset crops when it reads) give the pixels format 1 stored."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sta_models import pseudogt as P
from sta_models.ave import AnnotationRow
from sta_models.cam_files import write_cam_file
from sta_models.config import PseudoGTConfig
from sta_models.datasets import FeatureDataset, close_handles

H = W = 72
ROWS = [AnnotationRow("Bark", 2, "v", 1, 6, 2), AnnotationRow("Dog", 3, "v", 5, 8, 3)]


def _format1(feature: Path, crop: Path, out: Path) -> None:
    """A crop file as the crops stage wrote it until commit 90669a6 (its code, on its boxes)."""
    with h5py.File(feature, "r") as f:
        frames, audio, valid, attrs = f["frames"][()], f["audio"][()], f["audio_valid"][()], dict(f.attrs)
    with h5py.File(crop, "r") as f:
        boxes, in_event = f["boxes"][()], f["has_box"][()]
    for i in np.flatnonzero(in_event):
        y0, x0, y1, x1 = (int(v) for v in boxes[i])
        frames[i] = cv2.resize(frames[i, y0:y1, x0:x1], (W, H), interpolation=cv2.INTER_LINEAR)
    with h5py.File(out, "w") as f:
        f.create_dataset("frames", data=frames, chunks=(1, H, W, 3))
        f.create_dataset("audio", data=audio, chunks=(1, 81, 199))
        f["audio_valid"], f["boxes"], f["has_box"] = valid, boxes, in_event
        for k, v in attrs.items():
            f.attrs[k] = v


@pytest.fixture()
def crops(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(7)
    feat = tmp_path / "features"
    feat.mkdir()
    frames = cv2.GaussianBlur(rng.integers(0, 255, (9 * H, W, 3), dtype=np.uint8), (0, 0), 2).reshape(9, H, W, 3)
    with h5py.File(feat / "v.h5", "w") as f:
        f["frames"] = frames
        f["audio"] = rng.standard_normal((9, 81, 199)).astype(np.float32)
        f["audio_valid"] = np.array([1, 1, 0, 1, 1, 1, 1, 1, 1], bool)
        f.attrs["video_id"] = "v"
    yy, xx = np.mgrid[0:H, 0:W]
    cam_dirs = {b: tmp_path / "cams" / b for b in ("s", "sa", "st")}
    for row in ROWS:
        secs = list(row.seconds)
        for d in cam_dirs.values():
            d.mkdir(parents=True, exist_ok=True)
            cy, cx = rng.uniform(15, 55, 2)
            g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 6.0**2))
            cams = g[None] + 0.05 * rng.random((len(secs), H, W))
            write_cam_file(d / f"{row.key}.h5", {"cams": list(cams), "seconds": secs,
                           "pred_class": [row.category_id] * len(secs), "pred_prob": [0.8] * len(secs),
                           "true_prob": [0.7] * len(secs)}, {"canvas": H})
    new, old = tmp_path / "crops", tmp_path / "crops_format1"
    P.coarse_boxes_and_crops(cam_dirs, ROWS, feat, new, PseudoGTConfig(min_box=20))
    old.mkdir()
    for row in ROWS:
        _format1(feat / "v.h5", new / f"{row.key}.h5", old / f"{row.key}.h5")
    return new, old


@pytest.mark.parametrize(("kind", "size"), [("s", H), ("sa", 40), ("st", H), ("st", 48)])
def test_box_files_give_the_pixels_of_stored_crops(crops: tuple[Path, Path], kind: str, size: int) -> None:
    new, old = crops
    a = FeatureDataset(ROWS, new, kind, size)  # type: ignore[arg-type]
    b = FeatureDataset(ROWS, old, kind, size)  # type: ignore[arg-type]
    assert a.samples == b.samples and len(a) > 0 and a.crops and not b.crops
    cropped = 0
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(torch.as_tensor(x[key]), torch.as_tensor(y[key])), (i, key)
        cropped += int(a.crops[a.samples[i][0]][1][a.samples[i][1]])
    assert cropped == len(a)  # every sample is an event second: all of them were cropped
    with h5py.File(new / f"{ROWS[0].key}.h5") as f:  # and differ from the uncropped frames
        src = h5py.File(new.parent / "features" / "v.h5")["frames"][2]
        assert f["has_box"][2] and not np.array_equal(a.frames_at(0, [2])[0], src)


def test_forked_loader_workers_crop_the_same(crops: tuple[Path, Path]) -> None:
    """DataLoader workers fork after this process used OpenCV (the crops stage): they crop the same."""
    new, old = crops
    close_handles()
    runs = []
    for d, workers in ((new, 2), (old, 0)):
        ds = FeatureDataset(ROWS, d, "st", 56)
        runs.append([batch["frames"] for batch in DataLoader(ds, batch_size=3, num_workers=workers)])
    assert len(runs[0]) == len(runs[1]) > 1
    for x, y in zip(*runs, strict=True):
        assert torch.equal(x, y)


def test_crop_previews_show_the_box_and_the_crop(crops: tuple[Path, Path]) -> None:
    new, _ = crops
    previews = sorted((new / "previews").glob("*.png"))
    assert [p.name for p in previews] == ["v.c02_s001.png", "v.c02_s002.png", "v.c02_s003.png",
                                          "v.c03_s005.png", "v.c03_s006.png", "v.c03_s007.png"]
    img = cv2.imread(str(previews[0]))
    assert img.shape == (H, 2 * W, 3)
    Path("test-artifacts").mkdir(exist_ok=True)
    cv2.imwrite("test-artifacts/crop_preview.png", cv2.resize(img, (4 * W, 2 * H), interpolation=cv2.INTER_NEAREST))


def test_previews_only_for_the_first_rows(crops: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    new, _ = crops
    monkeypatch.setattr(P, "PREVIEW_ROWS", 1)
    cam_dirs = {b: new.parent / "cams" / b for b in ("s", "sa", "st")}
    out = new.parent / "crops_capped"
    P.coarse_boxes_and_crops(cam_dirs, ROWS, new.parent / "features", out, PseudoGTConfig(min_box=20))
    assert sorted(p.name for p in (out / "previews").glob("*.png")) == [
        "v.c02_s001.png", "v.c02_s002.png", "v.c02_s003.png"]
    assert len(list(out.glob("*.h5"))) == 2  # every row still gets its crop file


def test_box_files_without_their_feature_file_leave_the_rows_out(crops: tuple[Path, Path]) -> None:
    new, _ = crops
    close_handles()
    (new.parent / "features" / "v.h5").rename(new.parent / "v.h5")
    ds = FeatureDataset(ROWS, new, "s", 32)
    assert len(ds) == 0 and ds.exclusions() == {"missing_source_rows": 2}
