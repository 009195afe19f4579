"""Datasets over feature files: sample lists, exclusions, ST clamping, jitter, handle cache."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sta_models import datasets as D
from sta_models.datasets import FeatureDataset, feature_path, prepare_batch

from .conftest import make_row, write_features


def _stored(path: Path, k: int) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["frames"][k]


def test_s_items_are_resized_uint8_without_augmentation_at_eval(tmp_path: Path) -> None:
    write_features(tmp_path / "a.h5", 1, seconds=5)
    ds = FeatureDataset([make_row("a", 1, 1, 4)], tmp_path, "s", 32)
    assert ds.samples == [(0, 1), (0, 2), (0, 3)]
    item = ds[1]
    assert item["image"].dtype == torch.uint8 and tuple(item["image"].shape) == (3, 32, 32)
    assert (item["label"], item["second"], item["row"]) == (1, 2, 0)
    stored = torch.from_numpy(_stored(tmp_path / "a.h5", 2)).permute(2, 0, 1).float()
    expected = F.interpolate(stored[None], size=(32, 32), mode="bilinear", antialias=True)[0]
    assert (item["image"].float() - expected).abs().max() <= 1.0  # uint8 rounding only
    assert torch.equal(ds[(1, 999)]["image"], item["image"])  # train=False: seeds never augment
    D.close_handles()


def test_train_jitter_is_per_sample_and_seeded(tmp_path: Path) -> None:
    write_features(tmp_path / "a.h5", 0, seconds=4)
    ds = FeatureDataset([make_row("a", 0, 0, 4)], tmp_path, "st", 32, train=True)
    plain = ds[1]
    j1, j2, j3 = ds[(1, 7)], ds[(1, 7)], ds[(1, 8)]
    assert plain["jitter"].tolist() == list(D.NO_JITTER)
    assert torch.equal(j1["jitter"], j2["jitter"]) and not torch.equal(j1["jitter"], j3["jitter"])
    assert torch.equal(j1["frames"], plain["frames"])  # raw frames travel; the jitter is applied batched
    eval_ds = FeatureDataset([make_row("a", 0, 0, 4)], tmp_path, "st", 32, train=False)
    assert eval_ds[(1, 7)]["jitter"].tolist() == list(D.NO_JITTER)  # never at eval / CAM time

    batch = torch.utils.data.default_collate([j1, j3, plain])
    out = prepare_batch(batch, torch.device("cpu"))["frames"]
    raw = prepare_batch({**batch, "jitter": torch.tensor([D.NO_JITTER] * 3)}, torch.device("cpu"))["frames"]
    assert torch.allclose(raw[2], out[2], atol=1e-5) and not torch.allclose(raw[0], out[0], atol=1e-2)
    # one draw for all frames of a sample: the batched result equals jittering each frame alone
    mean = torch.tensor(D.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(D.IMAGENET_STD).view(3, 1, 1)
    for k in range(3):
        alone = D.color_jitter(j1["frames"][k : k + 1], 7)[0].float()
        assert (((alone / 255 - mean) / std) - out[0, k]).abs().max() < 0.01  # uint8 rounding only
    D.close_handles()


def test_sa_excludes_silent_seconds_and_pairs_audio(tmp_path: Path) -> None:
    write_features(tmp_path / "a.h5", 2, seconds=5, invalid_audio=(1, 3))
    ds = FeatureDataset([make_row("a", 2, 0, 5)], tmp_path, "sa", 32)
    assert [k for _, k in ds.samples] == [0, 2, 4]
    assert ds.exclusions() == {"audio_invalid_samples": 2}
    item = ds[1]
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert np.array_equal(item["audio"][0].numpy(), f["audio"][2])
    assert tuple(item["audio"].shape) == (1, 81, 199) and item["audio"].dtype == torch.float32
    keep = FeatureDataset([make_row("a", 2, 0, 5)], tmp_path, "sa", 32, skip_invalid_audio=False)
    assert len(keep) == 5 and keep.exclusions() == {}
    D.close_handles()


def test_st_clamps_to_event_and_skips_short_rows(tmp_path: Path) -> None:
    write_features(tmp_path / "a.h5", 0, seconds=6, seed=3)
    rows = [make_row("a", 0, 1, 5), make_row("a", 1, 0, 2)]  # the second row: 2 s event
    ds = FeatureDataset(rows, tmp_path, "st", 48, with_audio=True)
    assert ds.exclusions() == {"short_event_rows": 1}
    assert [ds.seconds_for(i) for i in range(len(ds))] == [[1, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]
    item = ds[0]
    assert tuple(item["frames"].shape) == (3, 3, 48, 48)
    for j, k in enumerate([1, 1, 2]):  # image and audio of each neighbour from the same second
        assert torch.equal(item["frames"][j], torch.from_numpy(_stored(tmp_path / "a.h5", k)).permute(2, 0, 1))
        with h5py.File(tmp_path / "a.h5", "r") as f:
            assert np.array_equal(item["audios"][j, 0].numpy(), f["audio"][k])
    D.close_handles()


def test_rows_past_the_file_and_missing_files_are_counted(tmp_path: Path) -> None:
    write_features(tmp_path / "a.h5", 0, seconds=3)
    ds = FeatureDataset([make_row("a", 0, 1, 5), make_row("zz", 0, 0, 4)], tmp_path, "s", 32)
    assert [k for _, k in ds.samples] == [1, 2]
    assert ds.exclusions() == {"missing_file_rows": 1, "missing_seconds": 2}


def test_per_row_crop_file_wins_over_video_file(tmp_path: Path) -> None:
    row = make_row("vid", 4, 0, 3)
    write_features(tmp_path / "vid.h5", 4, seconds=3, seed=1)
    assert feature_path(tmp_path, row) == tmp_path / "vid.h5"
    write_features(tmp_path / "vid.c04.h5", 4, seconds=3, seed=2)
    assert feature_path(tmp_path, row) == tmp_path / "vid.c04.h5"
    ds = FeatureDataset([row], tmp_path, "s", 48)
    assert torch.equal(ds[0]["image"], torch.from_numpy(_stored(tmp_path / "vid.c04.h5", 0)).permute(2, 0, 1))
    D.close_handles()


def test_files_are_opened_once_per_process(tmp_path: Path, monkeypatch) -> None:
    for v in ("a", "b"):
        write_features(tmp_path / f"{v}.h5", 0, seconds=4)
    ds = FeatureDataset([make_row("a", 0, 0, 4), make_row("b", 0, 0, 4)], tmp_path, "sa", 32)
    opened: list[str] = []
    real = h5py.File
    monkeypatch.setattr(D.h5py, "File", lambda p, *a, **k: opened.append(str(p)) or real(p, *a, **k))
    for i in range(len(ds)):
        ds[i]
    assert sorted(opened) == [str(tmp_path / "a.h5"), str(tmp_path / "b.h5")]
    D.close_handles()


def test_prepare_batch_normalises_on_device() -> None:
    batch = {"image": torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), "label": torch.tensor([1, 2])}
    out = prepare_batch(batch, torch.device("cpu"))
    expected = (1.0 - torch.tensor(D.IMAGENET_MEAN)) / torch.tensor(D.IMAGENET_STD)
    assert out["image"].dtype == torch.float32
    assert torch.allclose(out["image"][0, :, 0, 0], expected)
    assert torch.equal(out["label"], batch["label"])


@pytest.mark.timeout(120)
def test_worker_processes_give_the_same_batches(tmp_path: Path) -> None:
    """Same samples and the same jitter with 0 or 2 workers (aug seeds come from the sampler).

    The parent uses OpenCV's thread pool first: forked workers must not touch it (that deadlocked).
    """
    from sta_models.trainer import SeededSampler, make_loader

    cv2.GaussianBlur(np.zeros((360, 640, 3), np.uint8), (0, 0), 3)
    for v in ("a", "b"):
        write_features(tmp_path / f"{v}.h5", 0, seconds=4, seed=ord(v))
    ds = FeatureDataset([make_row("a", 0, 0, 4), make_row("b", 1, 0, 4)], tmp_path, "st", 32, train=True)
    runs = []
    for workers in (0, 2):
        loader = make_loader(ds, 3, sampler=SeededSampler(len(ds), seed=5), workers=workers)
        runs.append([(b["frames"], b["label"], b["second"]) for b in loader])
        del loader
    assert len(runs[0]) == len(runs[1]) == 3
    for (f0, l0, s0), (f1, l1, s1) in zip(*runs, strict=True):
        assert torch.equal(f0, f1) and torch.equal(l0, l1) and torch.equal(s0, s1)
    D.close_handles()


def test_fast_jitter_matches_torchvision_where_it_should() -> None:
    """Brightness, contrast and saturation equal torchvision's (no clamping involved); hue keeps
    greys grey and maps R→G→B at 1/3 turn, like an HSV hue shift."""
    import torchvision.transforms.v2.functional as TF

    g = torch.Generator().manual_seed(0)
    x = torch.randint(90, 160, (2, 3, 16, 16), generator=g, dtype=torch.uint8)
    b, c, s, _ = D.jitter_factors(11)
    ref = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, b), c), s)
    mine = D.color_jitter(x, 11, strength=(0.3, 0.3, 0.3, 0.0))
    diff = (mine.int() - ref.int()).abs()  # torchvision rounds to uint8 after every step
    assert diff.max() <= 3 and diff.float().mean() <= 2
    grey = torch.full((1, 3, 4, 4), 120, dtype=torch.uint8)
    assert torch.equal(D.color_jitter(grey, 3, strength=(0.0, 0.0, 0.0, 0.1)), grey)
    rgb = torch.tensor([200.0, 60.0, 60.0])
    assert torch.allclose(D.jitter_matrix(1, 1, 1, 1 / 3) @ rgb, torch.tensor([60.0, 200.0, 60.0]), atol=1e-3)
