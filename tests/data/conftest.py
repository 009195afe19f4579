"""Tiny real encoded clips for the data-layer tests, made with ffmpeg once per session.

Every frame carries its identity: the left half is the colour of its second (``PALETTE[k]``), the
right half a grey level ``LEVEL_STEP * n`` for frame number ``n``, so a test can tell exactly which
decoded frame the extractor kept.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

PALETTE = np.array([(230, 30, 30), (30, 200, 40), (30, 70, 235), (245, 220, 20), (225, 30, 225), (20, 215, 225)])
LEVEL_STEP = 5
W, H = 64, 48


def frame_times(seconds: float, fps: float | list[tuple[float, float]]) -> np.ndarray:
    """Presentation times: a constant rate, or [(rate, length_s), …] pieces for variable frame rate."""
    if isinstance(fps, int | float):
        return np.arange(int(round(seconds * fps))) / fps
    times, t0 = [], 0.0
    for rate, length in fps:
        times += list(t0 + np.arange(int(round(rate * length))) / rate)
        t0 += length
    return np.array(times)


def make_clip(
    path: Path, ffmpeg: str, *, seconds: float = 3, fps: float | list[tuple[float, float]] = 24,
    tone: float | None = 1000.0, sample_rate: int = 48000, channels: int = 2, audio_seconds: float | None = None,
    vcodec: str = "libx264", acodec: str = "aac", extra: tuple[str, ...] = (),
) -> np.ndarray:
    """Encode a clip; returns the frame times. Variable rates get exact per-frame timestamps."""
    times = frame_times(seconds, fps)
    n = np.arange(len(times))
    frames = np.empty((len(times), H, W, 3), np.uint8)
    frames[:, :, : W // 2] = PALETTE[np.floor(times).astype(int) % len(PALETTE)][:, None, None, :]
    frames[:, :, W // 2 :] = (LEVEL_STEP * n % 250)[:, None, None, None]
    base = 1000  # frames enter at 1000 fps, then setpts places each at its true time
    ticks = np.round(times * base).astype(int)
    expr = "+".join(f"eq(N,{i})*{t}" for i, t in enumerate(ticks)) if not isinstance(fps, int | float) else None
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}",
           "-r", str(fps if expr is None else base), "-i", "pipe:"]
    if tone is not None:
        dur = seconds if audio_seconds is None else audio_seconds
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={tone}:sample_rate={sample_rate}:duration={dur}"]
    vf = ["-vf", f"setpts='({expr})/({base}*TB)'", "-fps_mode", "vfr"] if expr else []
    cmd += ["-map", "0:v", *vf, "-c:v", vcodec]
    if vcodec == "libx264":
        cmd += ["-pix_fmt", "yuv420p", "-crf", "10", "-preset", "ultrafast"]
    if tone is not None:
        cmd += ["-map", "1:a", "-c:a", acodec, "-ac", str(channels), "-ar", str(sample_rate)]
    cmd += [*extra, str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True)
    return times


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory, ffmpeg_bin: str) -> dict[str, Path]:
    """Every container/codec/rate/audio case of the extraction tests, encoded once."""
    d = tmp_path_factory.mktemp("clips")
    specs: dict[str, tuple[str, dict]] = {
        "mp4_24": ("mp4_24.mp4", {"fps": 24, "seconds": 3}),
        "mp4_25_44k": ("mp4_25_44k.mp4", {"fps": 25, "seconds": 3, "sample_rate": 44100, "tone": 2000.0}),
        "ntsc_mkv": ("ntsc.mkv", {"fps": 30000 / 1001, "seconds": 3, "vcodec": "libvpx-vp9", "acodec": "libopus",
                                  "channels": 6, "extra": ("-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k",
                                                           "-mapping_family", "1")}),
        "avi": ("mjpeg.avi", {"fps": 25, "seconds": 2, "vcodec": "mjpeg", "acodec": "pcm_s16le",
                              "sample_rate": 44100, "tone": 500.0, "extra": ("-q:v", "2")}),
        "vfr": ("vfr.mp4", {"fps": [(30, 1.0), (4, 1.0), (12, 1.0)], "seconds": 3}),
        "silent": ("silent.mp4", {"tone": None, "seconds": 2}),
        "short_audio": ("short_audio.mp4", {"seconds": 4, "audio_seconds": 1.6}),
        "tiny": ("tiny.mp4", {"seconds": 0.5}),
        "unicode": ("vidéo 日本 clip.mp4", {"seconds": 2}),
        "faststart": ("faststart.mp4", {"seconds": 3, "extra": ("-movflags", "+faststart")}),
    }
    out = {}
    for name, (file, kwargs) in specs.items():
        make_clip(d / file, ffmpeg_bin, **kwargs)
        out[name] = d / file
    return out
