"""Extraction (SPEC §2) on real encoded clips: shapes, values, frame choice by timestamp, error paths."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import LEVEL_STEP, PALETTE, frame_times
from scipy import signal

from sta_models.extraction import ExtractionError, extract_video, log_spectrograms

SIZE = 32


def _read(path: Path) -> dict:
    with h5py.File(path, "r") as h5:
        return {"attrs": dict(h5.attrs), **{k: h5[k][()] for k in h5}}


def _frame_levels(frames: np.ndarray) -> np.ndarray:
    """The frame number encoded in the right half of each stored frame."""
    return frames[:, :, SIZE // 2 + 2 :].mean(axis=(1, 2, 3)) / LEVEL_STEP


def _expected_frames(times: np.ndarray, seconds: int) -> np.ndarray:
    targets = np.arange(seconds) + 0.5
    return np.abs(times[None, :] - targets[:, None]).argmin(axis=1)


def _dir_listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def test_mp4_shapes_dtypes_attributes_and_values(clips, tmp_path):
    out = tmp_path / "a.h5"
    res = extract_video(clips["mp4_24"], out, size=SIZE, video_id="vid")
    data = _read(out)
    assert (res.seconds, res.audio_seconds, res.skipped, res.video_id) == (3, 3, False, "vid")
    assert data["frames"].shape == (3, SIZE, SIZE, 3) and data["frames"].dtype == np.uint8
    assert data["audio"].shape == (3, 81, 199) and data["audio"].dtype == np.float32
    assert data["audio_valid"].dtype == bool and data["audio_valid"].all()
    a = data["attrs"]
    assert (a["video_id"], a["width"], a["height"], a["size"]) == ("vid", 64, 48, SIZE)
    assert (a["sample_rate"], a["nperseg"], a["noverlap"]) == (16000, 160, 80)
    assert a["fps"] == pytest.approx(24.0) and a["duration"] == pytest.approx(3.0, abs=0.05)
    assert len(a["source_sha256"]) == 64
    # Left half: the colour of second k (RGB order); right half: frame 12 + 24k, nearest to k + 0.5.
    left = data["frames"][:, :, : SIZE // 2 - 2].mean(axis=(1, 2))
    np.testing.assert_allclose(left, PALETTE[:3], atol=8)
    np.testing.assert_allclose(_frame_levels(data["frames"]), [12, 36, 10], atol=0.6)  # 60/5, 180/5, 300%250/5
    # A 1 kHz tone peaks in bin 10 (100 Hz per bin) and each second is standardised.
    assert (data["audio"].mean(axis=2).argmax(axis=1) == 10).all()
    np.testing.assert_allclose(data["audio"].mean(axis=(1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(data["audio"].std(axis=(1, 2)), 1, atol=1e-3)
    assert not any(".tmp" in n for n in _dir_listing(tmp_path))


def test_44k_audio_and_25fps_colours(clips, tmp_path):
    data = _read(extract_video(clips["mp4_25_44k"], tmp_path / "b.h5", size=SIZE).path)
    assert (data["audio"].mean(axis=2).argmax(axis=1) == 20).all()  # 2 kHz
    np.testing.assert_allclose(data["frames"][:, :, :12].mean(axis=(1, 2)), PALETTE[:3], atol=8)


def test_mkv_vp9_opus_51_at_2997(clips, tmp_path):
    data = _read(extract_video(clips["ntsc_mkv"], tmp_path / "c.h5", size=SIZE).path)
    assert data["frames"].shape[0] == 3 and data["audio_valid"].all()
    assert data["attrs"]["fps"] == pytest.approx(30000 / 1001, rel=1e-3)
    assert (data["audio"].mean(axis=2).argmax(axis=1) == 10).all()
    np.testing.assert_allclose(data["frames"][:, :, :12].mean(axis=(1, 2)), PALETTE[:3], atol=10)
    # Frames 15, 45 and 74/75 (the stream starts 7 ms late, so 2.5 s sits between two frames).
    np.testing.assert_allclose(_frame_levels(data["frames"])[:2], [15, 45], atol=1.0)
    assert 23.5 <= _frame_levels(data["frames"])[2] <= 25.5


def test_avi_mjpeg_pcm(clips, tmp_path):
    data = _read(extract_video(clips["avi"], tmp_path / "d.h5", size=SIZE).path)
    assert data["frames"].shape == (2, SIZE, SIZE, 3)
    assert (data["audio"].mean(axis=2).argmax(axis=1) == 5).all()  # 500 Hz
    np.testing.assert_allclose(_frame_levels(data["frames"]), [12, 37], atol=0.6)  # 0.48 s and 1.48 s


def test_variable_frame_rate_picks_by_timestamp(clips, tmp_path):
    data = _read(extract_video(clips["vfr"], tmp_path / "e.h5", size=SIZE).path)
    times = frame_times(3, [(30, 1.0), (4, 1.0), (12, 1.0)])
    expected = _expected_frames(times, 3)
    assert list(expected) == [15, 32, 40]
    assert data["frames"].shape[0] == 3
    np.testing.assert_allclose(_frame_levels(data["frames"]), expected, atol=0.6)
    # A frame counter at the average rate would have picked a different frame for second 2.
    avg_fps = len(times) / 3
    assert int(round(2.5 * avg_fps)) != 40


def test_no_audio_stream(clips, tmp_path):
    data = _read(extract_video(clips["silent"], tmp_path / "f.h5", size=SIZE).path)
    assert data["frames"].shape[0] == 2
    assert not data["audio_valid"].any() and not data["audio"].any()


def test_audio_shorter_than_video(clips, tmp_path):
    res = extract_video(clips["short_audio"], tmp_path / "g.h5", size=SIZE)
    data = _read(res.path)
    assert res.seconds == 4 and res.audio_seconds == 2
    assert list(data["audio_valid"]) == [True, True, False, False]  # 1.6 s of audio: second 1 is 60 % covered
    assert not data["audio"][2:].any() and data["audio"][:2].any()


def test_clip_shorter_than_one_second_gives_empty_file(clips, tmp_path):
    res = extract_video(clips["tiny"], tmp_path / "h.h5", size=SIZE)
    data = _read(res.path)
    assert res.seconds == 0
    assert data["frames"].shape == (0, SIZE, SIZE, 3) and data["audio"].shape == (0, 81, 199)


def test_non_ascii_path(clips, tmp_path):
    out = tmp_path / "sortie é" / "日本.h5"
    res = extract_video(clips["unicode"], out, size=SIZE)
    assert out.exists() and res.seconds == 2 and res.video_id == "vidéo 日本 clip"


def test_idempotent_and_parameter_sensitive(clips, tmp_path):
    out = tmp_path / "i.h5"
    first = extract_video(clips["mp4_24"], out, size=SIZE)
    stamp = out.stat().st_mtime_ns
    again = extract_video(clips["mp4_24"], out, size=SIZE)
    assert not first.skipped and again.skipped and out.stat().st_mtime_ns == stamp
    assert again.seconds == 3 and again.audio_seconds == 3
    bigger = extract_video(clips["mp4_24"], out, size=SIZE * 2)
    assert not bigger.skipped and _read(out)["frames"].shape[1] == SIZE * 2
    sha = _read(out)["attrs"]["source_sha256"]
    other = extract_video(clips["faststart"], out, size=SIZE * 2)  # different bytes: redone
    assert not other.skipped and _read(out)["attrs"]["source_sha256"] != sha


def _assert_fails(video: Path, out_dir: Path, fragment: str) -> None:
    before = _dir_listing(out_dir)
    with pytest.raises(ExtractionError) as info:
        extract_video(video, out_dir / "out.h5", size=SIZE)
    message = str(info.value)
    assert fragment in message and "\n" not in message and len(message) < 400
    assert _dir_listing(out_dir) == before  # no partial or temporary output


def test_error_paths_leave_nothing(clips, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    _assert_fails(tmp_path / "missing.mp4", out_dir, "no such file")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _assert_fails(empty, out_dir, "empty file")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    _assert_fails(text, out_dir, "not a readable video")
    data = clips["mp4_24"].read_bytes()  # moov atom at the end: cut before it
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    _assert_fails(cut, out_dir, "moov atom not found")
    fast = clips["faststart"].read_bytes()  # index first, media data cut in half
    cut_fast = tmp_path / "cut_fast.mp4"
    cut_fast.write_bytes(fast[: len(fast) // 2])
    _assert_fails(cut_fast, out_dir, "truncated or corrupt")
    _assert_fails(tmp_path, out_dir, "not a regular file")


def test_audio_only_file_is_not_a_video(ffmpeg_bin, tmp_path):
    import subprocess

    wav = tmp_path / "tone.wav"
    subprocess.run([ffmpeg_bin, "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", str(wav)], check=True)
    with pytest.raises(ExtractionError, match="no video stream"):
        extract_video(wav, tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


def test_spectrogram_matches_scipy_reference():
    rng = np.random.default_rng(0)
    audio = rng.normal(size=16000 * 2 + 3000).astype(np.float32)
    spec, valid = log_spectrograms(audio, 3)
    assert list(valid) == [True, True, False]  # 3000 samples < half a second
    _, _, ref = signal.spectrogram(audio[16000:32000].astype(np.float64), fs=16000, nperseg=160, noverlap=80)
    ref = np.log(ref + 1e-7)
    np.testing.assert_allclose(spec[1], (ref - ref.mean()) / (ref.std() + 1e-9), atol=1e-4)
    assert not spec[2].any()
