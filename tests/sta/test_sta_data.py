"""STA dataset on hand-written feature and pseudo-GT files: clamping, missing targets, shapes."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from sta_helpers import write_features, write_pseudo_gt

from sta_models.ave import AnnotationRow
from sta_models.datasets import close_handles
from sta_models.sta_data import StaDataset, build_index, neighbour_seconds

SIZE = 48


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path, list[AnnotationRow]]:
    feats, gts = tmp_path / "features", tmp_path / "pgt"
    feats.mkdir()
    gts.mkdir()
    rows = [
        AnnotationRow("Church bell", 0, "vidA", 1, 5, 1),  # seconds 1..4; pseudo-GT for 1, 2, 4
        AnnotationRow("Bark", 2, "vidB", 0, 2, 2),  # 2 s event: too short for STA
        AnnotationRow("Clock", 16, "vidC", 0, 4, 3),  # no pseudo-GT file
    ]
    write_features(feats / "vidA.h5", seconds=6, size=SIZE)
    write_features(feats / "vidB.h5", seconds=3, size=SIZE)
    write_features(feats / "vidC.h5", seconds=4, size=SIZE)
    write_pseudo_gt(gts / f"{rows[0].key}.h5", [1, 2, 4], canvas=40)
    write_pseudo_gt(gts / f"{rows[1].key}.h5", [0, 1], canvas=40)
    yield feats, gts, rows
    close_handles()


def test_neighbours_clamped_to_event() -> None:
    assert neighbour_seconds(1, 1, 4) == (1, 1, 2)
    assert neighbour_seconds(4, 1, 4) == (3, 4, 4)
    assert neighbour_seconds(2, 1, 4) == (1, 2, 3)


def test_index_rules_and_counts(files: tuple[Path, Path, list[AnnotationRow]]) -> None:
    feats, gts, rows = files
    index = build_index(rows, feats, gts)
    assert [s.seconds for s in index.samples] == [(1, 1, 2), (1, 2, 2), (4, 4, 4)]
    # t=2: t+1=3 has no pseudo-GT → centre; t=4: t−1=3 has none → centre
    assert index.neighbours_replaced == 2
    assert index.summary() == {
        "short_event_rows": 1, "missing_pseudo_gt_rows": 1, "event_seconds_without_pseudo_gt": 1,
        "neighbours_replaced_by_centre": 2,
    }


def test_items_pair_image_audio_and_target_of_the_same_second(
    files: tuple[Path, Path, list[AnnotationRow]],
) -> None:
    feats, gts, rows = files
    ds = StaDataset(rows, feats, gts, input_size=SIZE, train=False)
    assert len(ds) == 3
    with h5py.File(gts / f"{rows[0].key}.h5") as f:
        stored = {int(s): np.asarray(m, np.float32) for s, m in zip(f["seconds"][()], f["maps"][()], strict=True)}
    for i, sample in enumerate(ds.samples):
        item = ds[i]
        assert item["frames"].shape == (3, 3, SIZE, SIZE) and item["frames"].dtype == torch.uint8
        assert item["audios"].shape == (3, 1, 81, 199) and item["audios"].dtype == torch.float32
        assert item["target"].shape == (3, SIZE, SIZE) and item["target"].dtype == torch.float32
        assert item["second"] == sample.seconds[1]
        for k, s in enumerate(sample.seconds):
            assert int(item["frames"][k, 0, 0, 0]) == s  # the second written into pixel (0, 0)
            assert float(item["audios"][k, 0, 0, 0]) == s
            expected = cv2.resize(stored[s], (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_allclose(item["target"][k].numpy(), expected, atol=1e-6)


def test_targets_resized_to_input_size(files: tuple[Path, Path, list[AnnotationRow]]) -> None:
    feats, gts, rows = files
    item = StaDataset(rows, feats, gts, input_size=32, train=False)[0]
    assert item["frames"].shape == (3, 3, 32, 32)
    assert item["target"].shape == (3, 32, 32)
    assert float(item["target"].min()) >= 0.0 and 0.3 < float(item["target"].max()) <= 1.0


def test_train_jitter_is_one_draw_per_sample_and_eval_is_clean(
    files: tuple[Path, Path, list[AnnotationRow]],
) -> None:
    feats, gts, rows = files
    train = StaDataset(rows, feats, gts, input_size=SIZE, train=True)
    clean = StaDataset(rows, feats, gts, input_size=SIZE, train=False)
    same = 2  # sample (4, 4, 4): three copies of one frame
    a, b = train[(same, 123)], train[(same, 123)]
    assert torch.equal(a["frames"], b["frames"])  # reproducible from the sampler's seed
    assert not torch.equal(a["frames"], clean[same]["frames"])  # augmented …
    assert torch.equal(a["frames"][0], a["frames"][1]) and torch.equal(a["frames"][1], a["frames"][2])  # … alike
    assert torch.equal(a["target"], clean[same]["target"])  # targets never augmented
    assert torch.equal(clean[(same, 123)]["frames"], clean[same]["frames"])  # eval: no aug even with a seed
    assert torch.equal(train[same]["frames"], clean[same]["frames"])  # plain index: no aug
