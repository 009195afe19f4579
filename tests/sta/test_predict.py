"""Inference: PNG maps per second and a playable overlay MP4 with the original audio kept."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sta_models.callbacks import Callbacks
from sta_models.predict import clip_neighbours, predict_features, predict_videos
from sta_models.sta_training import load_sta


def _make_video(path: Path, ffmpeg: str, seconds: int = 3, size: str = "96x72") -> Path:
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=10:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:v", "libx264", "-pix_fmt",
         "yuv420p", "-c:a", "aac", "-shortest", str(path)],
        check=True,
    )
    return path


def _probe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                          str(path)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def predicted(trained_sta, ffmpeg_bin: str, tmp_path_factory: pytest.TempPathFactory):
    _, run_dir, _ = trained_sta
    videos = tmp_path_factory.mktemp("videos")
    _make_video(videos / "clip.mp4", ffmpeg_bin)
    (videos / "broken.mp4").write_bytes(b"not a video at all")
    out = tmp_path_factory.mktemp("pred")
    progress: list[tuple[int, int, str]] = []
    results = predict_videos(run_dir / "best.pt", videos, out, device="cpu", cache_dir=videos / "cache",
                             callbacks=Callbacks(progress=lambda d, t, w: progress.append((d, t, w))))
    return results, out, progress


def test_one_png_per_second_at_the_video_size(predicted) -> None:
    results, out, progress = predicted
    by_id = {r.video_id: r for r in results}
    clip = by_id["clip"]
    assert clip.ok and clip.seconds == 3
    pngs = sorted((out / "clip").glob("*.png"))
    assert [p.name for p in pngs] == ["00001.png", "00002.png", "00003.png"]
    img = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint8 and img.shape == (72, 96)  # grayscale, original width × height
    assert progress[-1][:2] == (2, 2)


def test_overlay_is_playable_with_audio(predicted) -> None:
    results, out, _ = predicted
    clip = next(r for r in results if r.video_id == "clip")
    assert clip.overlay == out / "clip_overlay.mp4"
    info = _probe(clip.overlay)
    kinds = {s["codec_type"]: s for s in info["streams"]}
    assert kinds["video"]["codec_name"] == "h264" and kinds["video"]["pix_fmt"] == "yuv420p"
    assert (kinds["video"]["width"], kinds["video"]["height"]) == (96, 72)
    assert kinds["audio"]["codec_name"] == "aac"
    assert abs(float(info["format"]["duration"]) - 3.0) < 0.25


def test_feature_file_inputs_get_overlays_too(predicted, trained_sta, tiny_data, tmp_path: Path) -> None:
    """With the source video (``sources``): real frames and audio; without: stored frames, silent."""
    results, _, _ = predicted
    _, run_dir, _ = trained_sta
    feats, _, _ = tiny_data
    clip = next(r for r in results if r.video_id == "clip")
    cached = clip.source.parent / "cache" / "clip.h5"
    res = predict_videos(run_dir / "best.pt", cached, tmp_path, device="cpu", sources={"clip": clip.source})
    info = _probe(res[0].overlay)
    assert {s["codec_type"] for s in info["streams"]} == {"video", "audio"}
    assert abs(float(info["format"]["duration"]) - 3.0) < 0.25
    res = predict_videos(run_dir / "best.pt", feats / "vid1.h5", tmp_path, device="cpu")
    info = _probe(res[0].overlay)
    assert [s["codec_type"] for s in info["streams"]] == ["video"]
    assert abs(float(info["format"]["duration"]) - 4.0) < 0.25  # one stored frame per second


def test_a_broken_video_fails_alone_with_one_line(predicted) -> None:
    results, _, _ = predicted
    broken = next(r for r in results if r.source.name == "broken.mp4")
    assert not broken.ok and broken.error and "\n" not in broken.error and "broken.mp4" in broken.error


def test_predict_features_clamps_neighbours(trained_sta, tiny_data) -> None:
    _, run_dir, _ = trained_sta
    feats, _, _ = tiny_data
    model, meta = load_sta(run_dir / "best.pt")
    maps = predict_features(model, feats / "vid0.h5", input_size=meta["input_size"], batch_size=3)
    assert maps.shape == (4, 64, 64) and maps.dtype == np.float32
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    assert clip_neighbours(4).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    # the batched, chunked path equals a direct call on the clamped triple of the last second
    import h5py

    from sta_models.datasets import prepare_batch, resize_frames

    with h5py.File(feats / "vid0.h5") as f:
        frames = resize_frames(f["frames"][2:4][[0, 1, 1]], 64)[None]
        audio = torch.from_numpy(f["audio"][2:4][[0, 1, 1]]).unsqueeze(1)[None]
    batch = prepare_batch({"frames": frames, "audios": audio}, torch.device("cpu"))
    direct = model.saliency(batch["frames"], batch["audios"])[0].numpy()
    np.testing.assert_allclose(maps[3], direct, atol=1e-5)


def test_cli_predict(trained_sta, tiny_data, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli import main

    _, run_dir, _ = trained_sta
    feats, _, _ = tiny_data
    rc = main(["predict", "--checkpoint", str(run_dir / "best.pt"), "--videos", str(feats / "vid1.h5"),
               "--out", str(tmp_path / "out"), "--device", "cpu", "--no-overlay"])
    assert rc == 0
    assert len(list((tmp_path / "out" / "vid1").glob("*.png"))) == 4
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    rc = main(["predict", "--checkpoint", str(bad), "--videos", str(feats), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and "bad.pt" in err[-1]
