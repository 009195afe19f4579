"""The STAViS protocol on hand-made GT folders, and the ``stapipe evaluate`` command."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.io import savemat

from sta_models import evaluation as E
from sta_models.config import EvaluateConfig
from sta_models.evaluation_result import load_evaluation
from sta_models.imageio_utils import read_map, write_map

H, W = 36, 48
CFG = EvaluateConfig(n_splits=10)


def _gauss(cy: float, cx: float, s: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))


def _write_gt(root: Path, video: str, centres: list[tuple[int, int]], empty: tuple[int, ...] = ()) -> None:
    (root / video / "maps").mkdir(parents=True)
    for k, (cy, cx) in enumerate(centres, start=1):
        cv2.imwrite(str(root / video / "maps" / f"eyeMap_{k:05d}.jpg"), np.uint8(np.rint(255 * _gauss(cy, cx))))
        fix = np.zeros((H, W), np.uint8)
        if k not in empty:
            fix[cy, cx] = fix[cy + 1, cx] = fix[cy, cx + 2] = 1
        savemat(root / video / f"fixMap_{k:05d}.mat", {"eyeMap": fix})


@pytest.fixture()
def gt(tmp_path: Path) -> Path:
    root = tmp_path / "gt"
    _write_gt(root, "vidA", [(6, 8), (8, 10), (10, 12)])  # object near the top-left corner
    _write_gt(root, "vidB", [(28, 38), (27, 36)])  # near the bottom-right corner
    _write_gt(root, "vidC", [(6, 38), (8, 36), (10, 34)], empty=(2,))  # frame 2: no fixation
    return root


def _perfect(gt: Path, pred: Path) -> None:
    """Predictions = the decoded GT maps, saved as <video>/<N>.png."""
    for vdir in gt.iterdir():
        for p in (vdir / "maps").glob("eyeMap_*.jpg"):
            write_map(pred / vdir.name / f"{int(p.stem[-5:]):05d}.png", read_map(p))


def test_postprocess_blur_kernel_by_hand() -> None:
    delta = np.zeros((21, 21))
    delta[10, 10] = 5.0
    out = E.postprocess_prediction(delta, sigma=2.0)
    # 13-tap kernel: Σ_{k=-6..6} exp(-k²/8) = 1 + 2·(.882497+.606531+.324652+.135335+.043937+.011109)
    # = 5.008122; peak = (1/5.008122)² = 0.039871; the blur keeps the sum at 1
    assert out[10, 10] == pytest.approx(0.039871, abs=1e-6)
    assert out.sum() == pytest.approx(1.0, abs=1e-9)
    assert E.postprocess_prediction(np.full((4, 4), 0.7)) is None  # constant: undefined


def test_centre_bias_map_by_hand() -> None:
    m = E.centre_bias_map(5, 5, sigma_frac=0.2)  # σ = 1 px each way
    assert m[2, 2] == 1.0
    assert m[2, 0] == pytest.approx(math.exp(-2.0))  # 2 px left of centre
    assert m[0, 0] == pytest.approx(math.exp(-4.0))


def test_perfect_prediction_beats_the_centre_baseline(gt: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    _perfect(gt, pred)
    rep = E.evaluate_folder(pred, gt, cfg=CFG)
    base = E.evaluate_baseline(gt, "centre", cfg=CFG)
    assert rep.frames == 8 and rep.missing_frames == 0
    d, b = rep.dataset, base.dataset
    assert d["cc"] > 0.95 and d["sim"] > 0.8 and d["auc_j"] > 0.95 and d["kld"] < 0.1
    for m in ("cc", "nss", "sim", "auc_j", "auc_b", "sauc"):
        assert d[m] > b[m] + 0.05, m
    assert d["kld"] < b["kld"]
    # without the blur, a prediction equal to the GT map gives CC 1 and SIM 1 exactly
    exact = E.evaluate_folder(pred, gt, cfg=EvaluateConfig(n_splits=10, blur_sigma=0)).dataset
    assert exact["cc"] == pytest.approx(1.0, abs=1e-12) and exact["sim"] == pytest.approx(1.0, abs=1e-12)


def test_nan_frames_are_dropped_and_counted(gt: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    _perfect(gt, pred)
    write_map(pred / "vidA" / "00002.png", np.full((H, W), 0.5))  # constant map: every metric NaN
    rep = E.evaluate_folder(pred, gt, cfg=CFG)
    # vidA frame 2: 7 NaNs; vidC frame 2 (no fixations): nss, auc_j, auc_b, sauc
    assert rep.nan_counts == {"cc": 1, "nss": 2, "sim": 1, "kld": 1, "auc_j": 2, "auc_b": 2, "sauc": 2}
    assert rep.nan_frames == 2
    vid = {v.video: v for v in rep.videos}
    assert vid["vidC"].nan["nss"] == 1 and vid["vidC"].nan["cc"] == 0 and vid["vidC"].frames == 3
    assert not math.isnan(vid["vidC"].scores["nss"])
    # dataset = unweighted mean over videos of the per-video means
    for m in E.METRICS:
        assert rep.dataset[m] == pytest.approx(np.mean([v.scores[m] for v in rep.videos]))


def test_missing_predictions_are_reported(gt: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    _perfect(gt, pred)
    (pred / "vidB" / "00002.png").unlink()
    (pred / "vidA" / "00007.png").write_bytes((pred / "vidA" / "00001.png").read_bytes())  # no GT
    for p in (pred / "vidC").iterdir():
        p.unlink()
    (pred / "vidC").rmdir()
    (pred / "other").mkdir()
    (pred / "other" / "00001.png").write_bytes((pred / "vidA" / "00001.png").read_bytes())
    rep = E.evaluate_folder(pred, gt, cfg=CFG)
    assert [v.video for v in rep.videos] == ["vidA", "vidB"]
    assert rep.to_dict()["missing"] == {"vidB": [2]}
    assert rep.unpredicted_videos == ["vidC"] and rep.unmatched_videos == ["other"] and rep.extra_frames == 1
    text = "\n".join(rep.problems())
    assert "1 GT frame(s) have no prediction file (vidB: frames 2)" in text
    assert "vidC" in text and "other" in text


def test_seeded_results_are_reproducible(gt: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    _perfect(gt, pred)
    a = E.evaluate_folder(pred, gt, cfg=CFG).dataset
    b = E.evaluate_folder(pred, gt, cfg=CFG).dataset
    assert a == b


def test_cli_writes_json_csv_and_table(gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli import main

    pred = tmp_path / "pred"
    _perfect(gt, pred)
    (pred / "vidB" / "00001.png").unlink()
    out = tmp_path / "out"
    args = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--baseline", "centre",
            "--splits", "5", "--quiet"]
    assert main(args) == 1  # a GT frame without a prediction: refused, nothing written
    assert "1 of 8 GT frames have no prediction" in capsys.readouterr().err and not out.exists()
    rc = main([*args, "--allow-missing"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "vidB: frames 1" in captured.err
    result = load_evaluation(out / "metrics.json")
    assert [m.method for m in result.dataset] == ["prediction", "centre"]
    by_video = {v.video: v for v in result.videos_of("prediction")}
    assert by_video["vidB"].frames_missing == 1 and by_video["vidA"].frames_missing == 0
    assert result.method("prediction").frames_missing == 1
    assert result.config["n_splits"] == 5
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    all_rows = {r["method"]: r for r in rows if r["video"] == "ALL"}
    assert float(all_rows["prediction"]["cc"]) > float(all_rows["centre"]["cc"])
    assert len(rows) == 2 * (3 + 1)
    assert "prediction" in captured.out and "centre" in captured.out and "ALL" in captured.out
    # nothing to score -> exit status 1; a missing folder -> 2 with a one-line error
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--gt", str(gt), "--quiet"]) == 2
    assert "prediction folder not found" in capsys.readouterr().err
