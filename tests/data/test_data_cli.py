"""``stapipe synth / extract / extract-dataset`` through ``worker.cli.main``."""

from __future__ import annotations

import shutil

import h5py

from worker.cli import main


def test_synth_extract_and_extract_dataset(tmp_path, capsys):
    root = tmp_path / "ave"
    assert main(["synth", str(root), "--classes", "2", "--videos-per-class", "3", "--seconds", "2",
                 "--size", "64x48", "--seed", "3"]) == 0
    videos = sorted((root / "AVE").glob("*.mp4"))
    assert len(videos) == 6

    out = tmp_path / "one.h5"
    assert main(["extract", str(videos[0]), str(out), "--size", "40"]) == 0
    with h5py.File(out) as h5:
        assert h5["frames"].shape == (2, 40, 40, 3)
    assert main(["extract", str(videos[0]), str(out), "--size", "40"]) == 0
    assert "up to date" in capsys.readouterr().out

    # One broken video and one annotated-but-missing video: the rest still extracts, status 0.
    (root / "AVE" / videos[1].name).write_bytes(b"garbage" * 10)
    with open(root / "Annotations.txt", "a") as fh:
        fh.write("Bark&nosuchvideo&good&0&2\n")
    with open(root / "trainSet.txt", "a") as fh:
        fh.write("Bark&nosuchvideo&good&0&2\n")
    feats = tmp_path / "feats"
    assert main(["extract-dataset", str(root), str(feats), "--jobs", "2", "--size", "32"]) == 0
    captured = capsys.readouterr()
    assert "5 extracted, 0 already up to date, 1 failed" in captured.out
    assert f"{videos[1].name}: not a readable video" in captured.out
    assert "missing video AVE/nosuchvideo.mp4" in captured.out
    assert "Traceback" not in captured.out + captured.err
    assert len(list(feats.glob("*.h5"))) == 5
    assert main(["extract-dataset", str(root), str(feats), "--size", "32"]) == 0
    assert "0 extracted, 5 already up to date, 1 failed" in capsys.readouterr().out


def test_bad_input_is_one_line_and_nonzero(tmp_path, capsys):
    assert main(["extract", str(tmp_path / "nope.mp4"), str(tmp_path / "x.h5")]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err and "Traceback" not in err

    root = tmp_path / "broken"
    (root / "AVE").mkdir(parents=True)
    (root / "Annotations.txt").write_text("Bark&v1&good&0&2\n")
    (root / "AVE" / "v1.mp4").write_bytes(b"")
    assert main(["extract-dataset", str(root), str(tmp_path / "f")]) == 1
    assert "empty file" in capsys.readouterr().out
    assert main(["extract-dataset", str(tmp_path / "nothing"), str(tmp_path / "f")]) != 0

    assert main(["synth", str(tmp_path / "s"), "--videos-per-class", "1"]) != 0
    assert "at least 3" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "s", ignore_errors=True)
