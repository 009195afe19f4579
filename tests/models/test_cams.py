"""CAM extraction (SPEC §4): file format, previews, skipped rows; CAM quality on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sta_models.cam_files import read_cam_file
from sta_models.cams import compute_cams
from sta_models.config import TrainConfig
from sta_models.networks import build_branch
from sta_models.trainer import CHECKPOINT_FORMAT, atomic_save
from sta_models.training import model_meta, train_branch

from .conftest import make_row, write_features


def _checkpoint(tmp_path: Path, kind: str, size: int = 32) -> Path:
    torch.manual_seed(0)
    cfg = TrainConfig(backbone="resnet18", input_size=size)
    model = build_branch(kind, "resnet18", use_cache=False)
    path = tmp_path / f"{kind}.pt"
    atomic_save({"format": CHECKPOINT_FORMAT, "meta": model_meta(kind, cfg), "model": model.state_dict()}, path)
    return path


@pytest.mark.parametrize("kind", ["s", "sa", "st"])
def test_cam_files_format(tmp_path: Path, kind: str) -> None:
    feat = tmp_path / "feat"
    feat.mkdir()
    write_features(feat / "a.h5", 1, seconds=6, invalid_audio=(2,))
    write_features(feat / "b.h5", 2, seconds=4)
    rows = [make_row("a", 1, 1, 5), make_row("a", 3, 4, 6), make_row("b", 2, 0, 4)]  # a.c03: a 2 s event
    out = tmp_path / "cams"
    summary = compute_cams(kind, _checkpoint(tmp_path, kind), rows, feat, out, canvas=40, batch_size=3)

    peaks: list[float] = []
    expected = {"a.c01": [1, 2, 3, 4], "a.c03": [4, 5], "b.c02": [0, 1, 2, 3]}
    if kind == "st":
        assert summary.skipped_rows == {"a.c03": "event shorter than 3 s (no ST CAM)"}
        assert not (out / "a.c03.h5").exists()
        del expected["a.c03"]
    for key, seconds in expected.items():
        read = read_cam_file(out / f"{key}.h5")
        assert read is not None
        with h5py.File(out / f"{key}.h5", "r") as f:
            n = len(seconds)
            assert f["cams_native"].dtype == np.float16 and f["cams_native"].shape[0] == n
            assert f["cams_native"].shape[1] <= 2 and f.attrs["cam_format"] == 2  # class maps of 32 px input
            assert read.cams.dtype == np.float16 and read.cams.shape == (n, 40, 40)
            assert f["seconds"].dtype == np.int32 and f["seconds"][()].tolist() == seconds
            for name in ("pred_class", "pred_prob", "true_prob"):
                assert f[name].shape == (n,)
            cams = read.cams.astype(np.float32)
            # divided by (max + 1e-8): 1 for a real map; below 1 only for near-zero untrained maps
            peak = cams.reshape(n, -1).max(1)
            assert cams.min() >= 0 and peak.max() <= 1.0 + 1e-3
            peaks.extend(peak.tolist())
            assert np.all((f["pred_prob"][()] >= f["true_prob"][()] - 1e-6) & (f["pred_prob"][()] <= 1))
            assert f.attrs["branch"] == kind and f.attrs["key"] == key
    assert np.isclose(max(peaks), 1.0, atol=1e-3)
    previews = sorted(p.name for p in (out / "previews").glob("*.png"))
    assert "b.c02_000.png" in previews and "b.c02_003.png" in previews and len(previews) <= 3 * len(expected)
    img = cv2.imread(str(out / "previews" / "b.c02_000.png"))
    assert img.shape == (40, 40, 3)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["frames"] == sum(map(len, expected.values())) == summary.frames
    assert saved["rows_written"] == len(expected)


def test_cam_checkpoint_for_another_branch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds branch 's', not 'sa'"):
        compute_cams("sa", _checkpoint(tmp_path, "s"), [], tmp_path, tmp_path / "o", canvas=8)


def _object_mass(cam: np.ndarray, gt: np.ndarray, rel: float) -> tuple[float, float]:
    """Share of the (min-max normalised) CAM's mass inside the GT region gt > rel·max, and its area."""
    c = cv2.resize(cam, gt.shape[::-1], interpolation=cv2.INTER_LINEAR)
    c = (c - c.min()) / (c.max() - c.min() + 1e-8)  # the fusion of SPEC §5 min-max normalises too
    region = gt > rel * gt.max()
    return float((c * region).sum() / (c.sum() + 1e-8)), float(region.mean())


def test_s_cams_find_the_sounding_object(synth_root: Path, synth_features: Path, tmp_path: Path) -> None:
    """Short CPU training of S on 3 synthetic classes; CAMs compared to the generator's saliency.

    Measured (resnet18, 96 px, 12 epochs, seed 0; random-init backbone): val/train top-1 1.0; CAM
    peak on the object in 100 % of frames; mean mass 0.71–0.73 inside gt > 0.02·max (41 % of the
    image) and 0.55–0.57 inside gt > 0.1·max (27 %). Thresholds below leave a wide margin.
    3–30 s on 2 shared cores, so not marked slow.
    """
    from sta_models.ave import load_dataset

    ds = load_dataset(synth_root)
    cfg = TrainConfig(backbone="resnet18", input_size=96, epochs=12, batch_size=8, lr=1e-3,
                      decay_epochs=[100], workers=0, device="cpu", seed=0)
    res = train_branch("s", {"train": ds.train, "val": ds.val}, synth_features, tmp_path / "s", cfg,
                       use_cache=False)
    assert res.best_score >= 0.8  # chance: 1/3

    rows = ds.train + ds.val
    summary = compute_cams("s", res.best_checkpoint, rows, synth_features, tmp_path / "cams", canvas=112)
    assert summary.accuracy >= 0.8
    wide, core, hits, areas = [], [], [], []
    for row in rows:
        read = read_cam_file(tmp_path / "cams" / f"{row.key}.h5")
        assert read is not None
        cams, seconds = read.cams.astype(np.float32), read.seconds
        for cam, k in zip(cams, seconds, strict=True):
            gt_path = synth_root / "annotations" / row.video_id / "maps" / f"eyeMap_{k + 1:05d}.jpg"
            gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE).astype(np.float32)
            m, area = _object_mass(cam, gt, 0.02)
            wide.append(m)
            areas.append(area)
            core.append(_object_mass(cam, gt, 0.1)[0])
            c = cv2.resize(cam, gt.shape[::-1])
            hits.append(gt.flat[int(c.argmax())] > 0.25 * gt.max())
    assert np.mean(hits) >= 0.8
    assert np.mean(wide) >= 0.55 and np.mean(wide) > 1.25 * np.mean(areas)  # most of the mass
    assert np.mean(core) >= 0.42


def _format1_cams(kind: str, checkpoint: Path, rows: list, feat: Path, canvas: int) -> dict[str, np.ndarray]:
    """Today's (format 1) maps, by the code that wrote them until commit 90669a6: the true-class
    CAM resized to the canvas on the device, divided by its max + 1e-8, float16."""
    from torch.utils.data import DataLoader

    from sta_models.datasets import FeatureDataset, prepare_batch
    from sta_models.networks.branches import run_branch
    from sta_models.trainer import load_checkpoint
    from sta_models.training import load_branch

    def normalised_cam(cam: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        idx = labels.view(-1, 1, 1, 1).expand(-1, 1, *cam.shape[-2:])
        m = cam.float().gather(1, idx)
        m = F.interpolate(m, size=(canvas, canvas), mode="bilinear", align_corners=False).clamp_min_(0)[:, 0]
        return m / (m.flatten(1).amax(1).view(-1, 1, 1) + 1e-8)

    ckpt = load_checkpoint(checkpoint)
    model = load_branch(ckpt, torch.device("cpu"))
    ds = FeatureDataset(rows, feat, kind, int(ckpt["meta"]["input_size"]), skip_invalid_audio=False)  # type: ignore[arg-type]
    out: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for raw in DataLoader(ds, batch_size=4):
            batch = prepare_batch(raw, torch.device("cpu"))
            maps = normalised_cam(run_branch(model, batch).cam(), batch["label"]).half().numpy()
            for j, i in enumerate(raw["row"].tolist()):
                out.setdefault(rows[i].key, []).append(maps[j])
    return {k: np.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("kind", ["s", "st"])
def test_native_cam_files_read_back_todays_maps(tmp_path: Path, kind: str) -> None:
    """Format 2 read back = format 1's canvas maps to float16 rounding, at the paper's sizes
    (input 256, fine canvas 356), from a fraction of the bytes; format 1 files still read."""
    feat = tmp_path / "feat"
    feat.mkdir()
    write_features(feat / "a.h5", 1, seconds=5, size=64)
    write_features(feat / "b.h5", 2, seconds=4, size=64, seed=3)
    rows = [make_row("a", 1, 0, 5), make_row("b", 2, 0, 4)]
    ckpt = _checkpoint(tmp_path, kind, size=256)
    out = tmp_path / "cams"
    compute_cams(kind, ckpt, rows, feat, out, canvas=356, batch_size=4, previews_per_row=1)
    today = _format1_cams(kind, ckpt, rows, feat, 356)
    for row in rows:
        new = read_cam_file(out / f"{row.key}.h5")
        assert new is not None and new.cams.shape == today[row.key].shape
        diff = np.abs(new.cams.astype(np.float32) - today[row.key].astype(np.float32))
        # float16 spacing is ≤ 2^-11 in [0.5, 1]: the stored native map and the read map each round once
        assert diff.max() <= 2 ** -10, diff.max()
        assert np.mean(diff) < 2e-4
        with h5py.File(out / f"{row.key}.h5") as f:
            native = f["cams_native"]
            assert native.shape[1] == native.shape[2] <= 16  # the class-map grid of a 256 px input
            assert 356**2 / np.prod(native.shape[1:]) >= 495  # data bytes per second
        old = tmp_path / "format1" / f"{row.key}.h5"  # a file as today's writer left it
        old.parent.mkdir(exist_ok=True)
        with h5py.File(old, "w") as f:
            f["cams"] = today[row.key]
            for name in ("seconds", "pred_class", "true_prob"):
                f[name] = getattr(new, name)
        back = read_cam_file(old)
        assert back is not None
        np.testing.assert_array_equal(back.cams, today[row.key])
