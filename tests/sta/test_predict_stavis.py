"""STAViS-layout input: every-frame maps named like the GT, feature reuse, refusal of partial
predictions, and an oracle check of the time-aligned scoring (SPEC §6/§7, issue #13).

The fixture is the real generator (``sta_models.synth_stavis``): a moving object at 25 and at
29.97 fps, a WAV for the first clip and none for the second, eyeMap JPEGs and fixMap MAT files.
The checkpoint is a real (2-epoch, tiny) STA training run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sta_models.clips import audio_windows, frame_neighbours, open_frame_folder, parse_fps
from sta_models.config import EvaluateConfig
from sta_models.evaluation import check_coverage, evaluate_folder
from sta_models.evaluation_result import load_evaluation
from sta_models.every_frame import predict_every_frame
from sta_models.imageio_utils import read_map, write_map
from sta_models.predict import predict_videos
from sta_models.sta_training import load_sta
from sta_models.synth_stavis import DEFAULT_VIDEOS, generate_stavis
from worker.cli import main as stapipe

DB = "SYNTH"
CFG = EvaluateConfig(n_splits=5)
N_FRAMES = {v.name: int(round(v.seconds * v.fps)) for v in DEFAULT_VIDEOS}  # 75 and 90


@pytest.fixture(scope="module")
def stavis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_stavis(tmp_path_factory.mktemp("stavis"), DB)


@pytest.fixture(scope="module")
def predicted(stavis: Path, trained_sta, tmp_path_factory: pytest.TempPathFactory):
    _, run_dir, _ = trained_sta
    out = tmp_path_factory.mktemp("pred-frames")
    results = predict_videos(run_dir / "best.pt", stavis / "video_frames" / DB, out, device="cpu",
                             audio_dir=stavis / "video_audio" / DB, fps=stavis / "fold_lists")
    return {r.video_id: r for r in results}, out


def test_neighbours_are_one_second_apart_and_clamped() -> None:
    nb = frame_neighbours(90, 30000 / 1001)
    assert nb[0].tolist() == [0, 0, 30]
    assert nb[45].tolist() == [15, 45, 75]
    assert nb[89].tolist() == [59, 89, 89]
    assert frame_neighbours(75, 25.0)[30].tolist() == [5, 30, 55]


def test_audio_windows_are_centred_and_silence_is_invalid() -> None:
    tone = np.sin(2 * np.pi * 1000 * np.arange(48000) / 16000)
    spec, valid = audio_windows(tone, np.array([0.0, 1.5, 2.9, 3.6]))
    assert valid.tolist() == [True, True, True, False]  # 3.6 s: less than half the window in the track
    assert not spec[3].any() and spec[1].std() > 0.5
    spec, valid = audio_windows(None, np.array([0.5, 1.5]))
    assert not valid.any() and not spec.any()


def test_fps_accepts_a_number_or_fold_lists(stavis: Path) -> None:
    rates = parse_fps(stavis / "fold_lists")
    assert rates.of("clip25") == 25.0 and rates.of("clip2997") == pytest.approx(29.97, abs=1e-3)
    assert parse_fps("30").of("anything") == 30.0
    with pytest.raises(ValueError, match="neither a number nor a fold list"):
        parse_fps(stavis / "nope.txt")


def test_a_map_for_every_frame_named_like_the_gt(predicted, stavis: Path) -> None:
    results, out = predicted
    for name, n in N_FRAMES.items():
        r = results[name]
        assert r.ok, r.error
        pngs = sorted(p.name for p in (out / name).glob("*.png"))
        gts = sorted(p.name.replace("eyeMap_", "").replace(".jpg", ".png")
                     for p in (stavis / "annotations" / DB / name / "maps").glob("eyeMap_*.jpg"))
        assert pngs == gts and len(pngs) == n
        img = cv2.imread(str(out / name / "00001.png"), cv2.IMREAD_UNCHANGED)
        assert img.shape == (60, 80)  # the frames' size
        assert r.stats.backbone_frames == n  # each frame through the backbone once
    assert results["clip25"].audio_note.startswith("wav")
    record = json.loads((out / "clip2997" / "prediction.json").read_text())
    assert record["audio"].startswith("silent") and record["frames"] == 90
    assert record["fps"] == pytest.approx(29.97, abs=1e-3)


def test_overlays_use_the_per_frame_maps(predicted, ffmpeg_bin: str) -> None:
    results, _ = predicted
    for name, audio in (("clip25", True), ("clip2997", False)):
        info = json.loads(subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-print_format", "json", "-show_streams",
             str(results[name].overlay)], check=True, capture_output=True, text=True).stdout)
        kinds = {s["codec_type"]: s for s in info["streams"]}
        assert int(kinds["video"]["nb_read_frames"]) == N_FRAMES[name]
        assert ("audio" in kinds) == audio


def test_evaluate_covers_every_frame(predicted, stavis: Path) -> None:
    _, out = predicted
    gt = stavis / "annotations" / DB
    assert check_coverage(out, gt).complete
    report = evaluate_folder(out, gt, cfg=CFG, name="sta")
    assert {v.video: (v.frames_scored, v.frames_missing) for v in report.videos} == {
        n: (f, 0) for n, f in N_FRAMES.items()}
    entry = report.to_dict()["videos"][0]
    assert {"frames_scored", "frames_missing", "frames_nan"} <= set(entry)


def test_reused_features_give_the_naive_maps(stavis: Path, trained_sta) -> None:
    """The cached path equals the full network on every (t−1, t, t+1) triple, with a third of
    the backbone passes."""
    _, run_dir, _ = trained_sta
    model, meta = load_sta(run_dir / "best.pt")
    clip = open_frame_folder(stavis / "video_frames" / DB / "clip25", 25.0, stavis / "video_audio" / DB)
    maps: dict[bool, dict[int, np.ndarray]] = {True: {}, False: {}}
    stats = {}
    for reuse in (True, False):
        stats[reuse] = predict_every_frame(model, clip, lambda i, m, r=reuse: maps[r].__setitem__(i, m),
                                           input_size=int(meta["input_size"]), frame_size=int(meta["frame_size"]),
                                           device=torch.device("cpu"), batch_size=8, reuse=reuse)
    assert sorted(maps[True]) == list(range(75))
    for i in range(75):
        np.testing.assert_allclose(maps[True][i], maps[False][i], atol=1e-5)
    assert (stats[True].backbone_frames, stats[False].backbone_frames) == (75, 225)


def test_oracle_gt_as_predictions_scores_cc_above_099(stavis: Path, tmp_path: Path) -> None:
    gt = stavis / "annotations" / DB
    for vdir in gt.iterdir():
        for p in (vdir / "maps").glob("eyeMap_*.jpg"):
            write_map(tmp_path / vdir.name / f"{int(p.stem[-5:]):05d}.png", read_map(p))
    report = evaluate_folder(tmp_path, gt, cfg=CFG, name="oracle")
    assert len(report.videos) == 2
    for v in report.videos:
        assert v.frames_scored == N_FRAMES[v.video] and v.scores["cc"] > 0.99, (v.video, v.scores)


def _per_second(pred: Path, out: Path) -> Path:
    """What the old per-second predict wrote: second k → file k+1 (here: frame k·fps+1 renamed)."""
    for name in N_FRAMES:
        (out / name).mkdir(parents=True)
        for k in range(3):
            shutil.copy(pred / name / f"{k * 25 + 1:05d}.png", out / name / f"{k + 1:05d}.png")
    return out


def test_evaluate_refuses_predictions_that_miss_gt_frames(predicted, stavis: Path, tmp_path: Path, capsys) -> None:
    _, out = predicted
    pred = _per_second(out, tmp_path / "per-second")
    gt = stavis / "annotations" / DB
    rc = stapipe(["evaluate", "--pred", str(pred), "--gt", str(gt), "--splits", "3", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert "159 of 165 GT frames have no prediction" in err[0] and "--allow-missing" in err[0]
    assert not (pred / "metrics.json").exists() and not (pred / "metrics.csv").exists()

    rc = stapipe(["evaluate", "--pred", str(pred), "--gt", str(gt), "--splits", "3", "--quiet", "--allow-missing"])
    printed = capsys.readouterr().out
    assert rc == 0 and "clip25: 3 GT frames scored, 72 missing, 0 NaN" in printed
    result = load_evaluation(pred / "metrics.json")
    videos = {v.video: v for v in result.videos}
    assert (videos["clip2997"].frames_scored, videos["clip2997"].frames_missing) == (3, 87)


def test_a_wrong_gt_writes_nothing(predicted, stavis: Path, tmp_path: Path, capsys) -> None:
    _, out = predicted
    pred = tmp_path / "pred"
    shutil.copytree(out, pred)
    for wrong in (stavis / "video_frames" / DB, tmp_path / "missing"):
        rc = stapipe(["evaluate", "--pred", str(pred), "--gt", str(wrong), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "nothing written" in err[0]
        assert not (pred / "metrics.json").exists()


def test_table_writer_keeps_published_numbers_and_marks_the_rest_na(tmp_path: Path) -> None:
    from sta_models.benchmark import BenchmarkTable, TableRow, published_row

    ours = TableRow("sta", "STA (ours)", {"AVAD": {"auc_j": 0.9, "sim": 0.4, "sauc": 0.6, "cc": 0.5, "nss": 2.5},
                                          "SYNTH": {"auc_j": 0.8, "sim": None, "sauc": 0.5, "cc": 0.1, "nss": 0.3}})
    table = BenchmarkTable(sets=["AVAD", "SYNTH"], rows=[ours, published_row(["AVAD", "SYNTH"])])
    paths = table.write(tmp_path)
    md = paths["md"].read_text().splitlines()
    assert md[0].startswith("| method | AVAD AUC-J | AVAD SIM | AVAD s-AUC | AVAD CC | AVAD NSS | SYNTH AUC-J")
    assert md[2] == "| STA (ours) | 0.900 | 0.400 | 0.600 | 0.500 | 2.500 | 0.800 | n/a | 0.500 | 0.100 | 0.300 |"
    assert md[3] == ("| STANet (published) | 0.873 | 0.334 | 0.580 | 0.438 | 2.018 | n/a | n/a | n/a | n/a | n/a |")
    rows = paths["csv"].read_text().splitlines()
    assert rows[0] == "set,method,AUC-J,SIM,s-AUC,CC,NSS" and "AVAD,STANet (published),0.873,0.334,0.580,0.438,2.018" in rows
    data = json.loads(paths["json"].read_text())
    assert data["rows"][1]["values"]["SYNTH"]["cc"] is None and data["rows"][1]["values"]["AVAD"]["nss"] == 2.018


@pytest.mark.slow
def test_benchmark_command_end_to_end(stavis: Path, trained_sta, tmp_path: Path, capsys) -> None:
    """Two sets: "AVAD" (a one-video stand-in, so the published row appears) and SYNTH (none)."""
    from sta_models.synth_stavis import SynthVideo

    _, run_dir, _ = trained_sta
    generate_stavis(stavis, "AVAD", (SynthVideo("v1", 25.0, 1.2, wav=True),), seed=5)
    out = tmp_path / "bench"
    argv = ["benchmark", "--checkpoint", str(run_dir / "best.pt"), "--stavis", str(stavis), "--db", "AVAD,SYNTH",
            "--out", str(out), "--device", "cpu", "--splits", "3", "--quiet"]
    assert stapipe(argv) == 0
    printed = capsys.readouterr().out
    assert "STANet (published)" in printed and "centre bias" in printed
    assert "SYNTH: 2 videos, 165 frames scored, 0 missing" in printed
    data = json.loads((out / "benchmark.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert set(rows) == {"sta", "centre", "published"} and data["sets"] == ["AVAD", "SYNTH"]
    assert rows["published"]["values"]["AVAD"]["cc"] == 0.438 and rows["published"]["values"]["SYNTH"]["cc"] is None
    assert all(isinstance(rows[m]["values"][s]["cc"], float) for m in ("sta", "centre") for s in data["sets"])
    assert data["runs"]["AVAD"]["frames_scored"] == 30 and "fold_lists/AVAD_list_test_1_fps.txt" in \
        data["runs"]["AVAD"]["fps_source"]
    assert data["runs"]["SYNTH"]["silent_videos"] == ["clip2997"]
    assert (out / "benchmark.md").read_text().startswith("| method |") and (out / "benchmark.csv").is_file()
    # a set that is not there: one line, exit status 2
    assert stapipe([*argv[:5], "--db", "DIEM", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "DIEM" in capsys.readouterr().err


def test_video_files_get_every_frame_maps_and_a_per_frame_overlay(trained_sta, ffmpeg_bin: str, tmp_path: Path) -> None:
    _, run_dir, _ = trained_sta
    videos = tmp_path / "videos"
    videos.mkdir()
    subprocess.run([ffmpeg_bin, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=96x72:rate=10:duration=2",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-shortest", str(videos / "clip.mp4")], check=True)
    (r,) = predict_videos(run_dir / "best.pt", videos, tmp_path / "out", device="cpu", every_frame=True)
    assert r.ok and (r.frames, r.fps, r.audio_note) == (20, 10.0, "from the video")
    assert sorted(p.name for p in (tmp_path / "out" / "clip").glob("*.png"))[-1] == "00020.png"
    info = json.loads(subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-print_format", "json",
                                      "-show_streams", str(r.overlay)], check=True, capture_output=True,
                                     text=True).stdout)
    kinds = {s["codec_type"]: s for s in info["streams"]}
    assert int(kinds["video"]["nb_read_frames"]) == 20 and "audio" in kinds
