"""Saliency overlay videos: a JET heat map blended over every frame, original audio kept.

Frames are streamed decoder → numpy → encoder (two ffmpeg processes, one frame in memory at a
time), so long clips cost no memory. Each decoded frame i (constant rate ``fps``, timestamp i/fps)
gets the map of its second ``floor(i/fps)`` (clamped to the last predicted second): STA predicts
one map per second (SPEC §6), and holding it for the whole second avoids inventing motion. With
per-frame maps (``per_frame=True``) frame i gets map i.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from sta_models.ffmpeg_tools import ffmpeg_exe, ffprobe_exe


class OverlayError(RuntimeError):
    """ffmpeg could not decode the source or encode the overlay (one-line reason)."""


def probe(path: Path) -> dict:
    """ffprobe's JSON (format and streams) for ``path``."""
    proc = subprocess.run(
        [ffprobe_exe(), "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise OverlayError(f"ffprobe failed on {path}: {_last_line(proc.stderr)}")
    return json.loads(proc.stdout)


def video_geometry(path: Path) -> tuple[int, int, float]:
    """(width, height, fps) of the first video stream."""
    info = probe(path)
    for stream in info.get("streams", []):
        if stream.get("codec_type") == "video":
            num, _, den = str(stream.get("avg_frame_rate") or stream.get("r_frame_rate", "0/1")).partition("/")
            fps = float(num) / float(den or 1) if float(den or 1) else 0.0
            if fps <= 0:
                num, _, den = str(stream.get("r_frame_rate", "25/1")).partition("/")
                fps = float(num) / float(den or 1)
            return int(stream["width"]), int(stream["height"]), fps
    raise OverlayError(f"{path} has no video stream")


def heat_overlay(frame: np.ndarray, saliency: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a JET heat map of ``saliency`` (float [0,1] any size) over an RGB uint8 ``frame``."""
    h, w = frame.shape[:2]
    sal = saliency if saliency.shape == (h, w) else cv2.resize(saliency, (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.clip(sal * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(frame, 1.0 - alpha, heat, alpha, 0.0)


def write_overlay(video: Path, maps: Sequence[np.ndarray] | np.ndarray, out: Path, *, alpha: float = 0.5, crf: int = 23,
                  per_frame: bool = False) -> Path:
    """Write ``out`` (H.264 yuv420p + the source's audio as AAC) with ``maps`` [T, h, w] in [0,1]:
    one per second, or one per frame with ``per_frame`` (any sequence: maps may be read lazily)."""
    if len(maps) == 0 or np.ndim(maps[0]) != 2:
        raise ValueError("maps must be [T, H, W] with T >= 1")
    width, height, fps = video_geometry(video)
    frame_bytes = width * height * 3
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    decode = [ffmpeg_exe(), "-v", "error", "-i", str(video), "-map", "0:v:0", "-r", f"{fps:.6f}",
              "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    encode = _encoder(width, height, fps, tmp, audio_from=video, crf=crf)
    with tempfile.TemporaryFile() as dec_err, tempfile.TemporaryFile() as enc_err:
        dec = subprocess.Popen(decode, stdout=subprocess.PIPE, stderr=dec_err)
        enc = subprocess.Popen(encode, stdin=subprocess.PIPE, stderr=enc_err)
        assert dec.stdout is not None and enc.stdin is not None
        i = 0
        try:
            while True:
                buf = dec.stdout.read(frame_bytes)
                if len(buf) < frame_bytes:
                    break
                frame = np.frombuffer(buf, np.uint8).reshape(height, width, 3)
                k = min(i if per_frame else int(i / fps), len(maps) - 1)
                enc.stdin.write(heat_overlay(frame, maps[k].astype(np.float32), alpha).tobytes())
                i += 1
        except BrokenPipeError:
            pass  # the encoder died; its exit status and stderr explain why
        finally:
            dec.stdout.close()
            dec_rc = dec.wait()
            with contextlib.suppress(BrokenPipeError):
                enc.stdin.close()
            enc_rc = enc.wait()
        if dec_rc != 0 or i == 0:
            dec_err.seek(0)
            tmp.unlink(missing_ok=True)
            raise OverlayError(f"cannot decode {video}: {_last_line(dec_err.read().decode(errors='replace'))}")
        if enc_rc != 0:
            enc_err.seek(0)
            tmp.unlink(missing_ok=True)
            raise OverlayError(f"ffmpeg could not encode {out}: {_last_line(enc_err.read().decode(errors='replace'))}")
    tmp.replace(out)
    return out


def write_overlay_frames(frames: Sequence[np.ndarray] | np.ndarray, maps: Sequence[np.ndarray] | np.ndarray, out: Path, *, fps: float = 1.0,
                         alpha: float = 0.5, crf: int = 23, audio_from: Path | None = None) -> Path:
    """Overlay from frames [T, H, W, 3] uint8 (stored seconds of a feature file, or a frame folder
    read lazily), streamed to the encoder; silent unless ``audio_from`` (e.g. the clip's WAV)."""
    if len(frames) == 0 or len(frames) != len(maps):
        raise ValueError("need one map per frame and at least one frame")
    height, width = frames[0].shape[:2]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    with tempfile.TemporaryFile() as enc_err:
        enc = subprocess.Popen(_encoder(width, height, fps, tmp, audio_from=audio_from, crf=crf),
                               stdin=subprocess.PIPE, stderr=enc_err)
        assert enc.stdin is not None
        try:
            for i in range(len(frames)):
                enc.stdin.write(heat_overlay(frames[i], maps[i].astype(np.float32), alpha).tobytes())
        except BrokenPipeError:
            pass  # the encoder died; its exit status and stderr explain why
        finally:
            with contextlib.suppress(BrokenPipeError):
                enc.stdin.close()
            rc = enc.wait()
        if rc != 0:
            enc_err.seek(0)
            tmp.unlink(missing_ok=True)
            raise OverlayError(f"ffmpeg could not encode {out}: {_last_line(enc_err.read().decode(errors='replace'))}")
    tmp.replace(out)
    return out


def _encoder(width: int, height: int, fps: float, out: Path, *, audio_from: Path | None, crf: int) -> list[str]:
    """ffmpeg reading raw RGB frames on stdin; H.264 yuv420p (even size), + ``audio_from``'s audio as AAC."""
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
           "-r", f"{fps:.6f}", "-i", "pipe:0"]
    if audio_from is not None:
        cmd += ["-i", str(audio_from), "-map", "0:v", "-map", "1:a?", "-c:a", "aac", "-shortest"]
    return cmd + ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast",
                  "-crf", str(crf), "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(out)]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no details"
