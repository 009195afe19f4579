"""``stapipe train-branch`` and ``stapipe cams`` end to end on the synthetic dataset (tiny sizes)."""

from __future__ import annotations

import json
from pathlib import Path

from sta_models.cam_files import read_cam_file
from worker.cli import main


def test_train_branch_then_cams(synth_root: Path, synth_features: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    rc = main(["train-branch", "--branch", "s", "--dataset", str(synth_root), "--features", str(synth_features),
               "--out", str(out), "--preset", "tiny", "--epochs", "1", "--input-size", "32", "--device", "cpu"])
    assert rc == 0
    assert "epoch 1: train loss" in capsys.readouterr().out
    record = json.loads((out / "record.json").read_text())
    assert record["epochs_done"] == 1 and record["config"]["input_size"] == 32
    assert record["config"]["backbone"] == "resnet18"  # from the tiny preset

    cams = tmp_path / "cams"
    rc = main(["cams", "--branch", "s", "--checkpoint", str(out / "best.pt"), "--dataset", str(synth_root),
               "--features", str(synth_features), "--out", str(cams), "--split", "val", "--canvas", "24"])
    assert rc == 0
    files = sorted(cams.glob("*.h5"))
    assert len(files) == 3  # one val video per class
    read = read_cam_file(files[0])
    assert read is not None and read.cams.shape[1:] == (24, 24)


def test_bad_options_are_one_line_errors(tmp_path: Path, capsys) -> None:
    rc = main(["train-branch", "--branch", "s", "--dataset", str(tmp_path), "--features", str(tmp_path),
               "--out", str(tmp_path / "o"), "--epochs", "0"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: epochs: Input should be greater than or equal to 1"
