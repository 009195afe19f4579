"""The disk estimate: one figure per stage, built from the formats the stages write."""

from __future__ import annotations

from pathlib import Path

from sta_models.ave import AnnotationRow, read_annotations
from sta_models.config import preset
from sta_models.disk_estimate import WEIGHTS, DatasetSize, estimate
from worker.stages import KINDS

AVE = Path(__file__).resolve().parents[1] / "data_files" / "Annotations.txt"


def test_dataset_size_from_rows() -> None:
    rows = [AnnotationRow("a", 1, "v1", 2, 10, 0), AnnotationRow("b", 2, "v1", 0, 2, 1),
            AnnotationRow("a", 1, "v2", 0, 6, 2)]
    ds = DatasetSize.of_rows(rows, rows[2:])
    assert (ds.videos, ds.video_seconds, ds.rows, ds.event_seconds) == (2, 16, 3, 16)
    assert (ds.st_rows, ds.st_event_seconds, ds.test_video_seconds) == (2, 14, 6)


def test_paper_on_ave_before_and_after() -> None:
    rows, problems = read_annotations(AVE)
    assert len(rows) == 4142 and len(problems) == 1  # one zero-length event
    ds = DatasetSize.of_rows(rows, rows[:414])
    cfg = preset("paper")
    after = estimate(cfg, ds)
    before = estimate(cfg, ds, formats="before")
    slim = estimate(cfg, ds, checkpoints="slim")
    today = estimate(cfg, ds, checkpoints="today")  # every stage keeping best.pt and last.pt
    assert set(after) == set(KINDS)
    # docs/decisions.md had ~63 GB of CAMs: float16 356² per event second, 3 branches, 2 stages
    assert 55e9 < before["cams_coarse"] + before["cams_fine"] < 65e9
    # ~190x with HDF5 overhead and previews (coarse 214x: 8² / 16² grids; fine 177x: 12² / 23² at 356 px input)
    assert (before["cams_coarse"] + before["cams_fine"]) / (after["cams_coarse"] + after["cams_fine"]) > 180
    assert before["crops"] / after["crops"] > 200
    assert after == slim  # keep_checkpoints: needed, the default: best.pt's weights only
    assert sum(today.values()) <= 35e9 and sum(after.values()) < sum(today.values())
    assert today["train_sa_coarse"] == 3 * 4 * WEIGHTS[("resnext101_32x8d", "sa")] == 3 * after["train_sa_coarse"]
    cfg.coarse["sa"].keep_checkpoints = "all"
    assert estimate(cfg, ds)["train_sa_coarse"] == today["train_sa_coarse"]
    double = estimate(cfg, DatasetSize(*(2 * v for v in vars(ds).values())))
    assert double["extract"] > 1.99 * after["extract"] and double["train_sta"] == after["train_sta"]
