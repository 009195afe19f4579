"""Per-video extraction (SPEC §2): one RGB frame and one log-spectrogram per whole second, one HDF5 file.

Each video is decoded once. ``ffprobe`` lists the video packets' timestamps (demuxing only, no
decoding), which tells which frame is nearest to ``k + 0.5 s`` for every second; a single ffmpeg
process then decodes the clip, lets only those frames through a ``select`` filter (so only they are
scaled and converted to RGB), reports their real timestamps through ``showinfo``, and writes the audio
as mono 16 kHz float PCM alongside. Choosing by timestamp (never by frame counter) makes variable
frame rate work.

Choices where the SPEC is silent:
- ``T = floor(min(container duration, end of the last video frame))``: a second is extracted only if
  the video covers it. A clip shorter than one second gives a valid file with ``T = 0``.
- Audio second ``k`` is valid when at least half of its samples exist; a partial second is padded
  with silence before the spectrogram, a missing one is all zeros.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from scipy import signal

from sta_models.ffmpeg_tools import ffmpeg_exe, ffprobe_exe
from sta_models.filehash import sha256_file

SAMPLE_RATE = 16000
NPERSEG = 160
NOVERLAP = 80
N_FREQ = NPERSEG // 2 + 1  # 81
N_TIME = (SAMPLE_RATE - NOVERLAP) // (NPERSEG - NOVERLAP)  # 199
FORMAT_VERSION = 1
MIN_AUDIO_FRACTION = 0.5

_SHOWINFO = re.compile(r"Parsed_showinfo.*?\bn:\s*(\d+)\s+pts:\s*(-?\d+)\s+pts_time:(-?[0-9.eE+-]+)")


class ExtractionError(Exception):
    """A video that cannot be extracted; ``str()`` is a one-line reason naming the file."""


@dataclass(frozen=True)
class ExtractionResult:
    """What one call did: ``skipped`` is True when an up-to-date output already existed."""

    path: Path
    video_id: str
    seconds: int
    audio_seconds: int
    fps: float
    duration: float
    width: int
    height: int
    skipped: bool


@dataclass(frozen=True)
class _Probe:
    duration: float  # container duration
    video_end: float  # end of the last video frame
    width: int
    height: int
    fps: float
    frame_times: np.ndarray  # sorted, seconds from the clip's start (ffmpeg's time axis)
    has_audio: bool


def _one_line(text: str, video: Path | None = None, limit: int = 200) -> str:
    """ffmpeg's messages without log prefixes or the file name, de-duplicated, on one line."""
    seen: list[str] = []
    for raw in text.splitlines():
        line = re.sub(r"^(\[[^\]]*\]\s*)+", "", raw.strip())
        if video is not None:
            line = line.replace(f"{video}: ", "")
        if line and line not in seen:
            seen.append(line)
    return "; ".join(seen)[:limit] or "unknown error"


def _float(value: object, default: float = math.nan) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]  # any object: float() raising is the check
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def _rate(text: str | None) -> float:
    if not text or "/" not in text:
        return _float(text, 0.0)
    num, den = text.split("/", 1)
    return _float(num, 0.0) / _float(den, 1.0) if _float(den, 0.0) else 0.0


def probe(video: Path) -> _Probe:
    """Streams, duration and the presentation times of every video frame (packets only, no decode)."""
    cmd = [
        ffprobe_exe(), "-v", "error", "-show_format", "-show_streams",
        "-show_entries", "packet=stream_index,pts_time,dts_time,duration_time", "-of", "json", str(video),
    ]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise ExtractionError(f"{video}: not a readable video ({_one_line(proc.stderr.decode(errors='replace'), video)})")
    stderr = proc.stderr.decode(errors="replace")
    info = json.loads(proc.stdout or b"{}")
    streams = info.get("streams", [])
    video_streams = [s for s in streams if s.get("codec_type") == "video"
                     and not s.get("disposition", {}).get("attached_pic")]
    if not video_streams:
        raise ExtractionError(f"{video}: no video stream")
    vs = video_streams[0]
    index = vs["index"]
    fmt = info.get("format", {})
    start = _float(fmt.get("start_time"), 0.0)
    times, durations = [], []
    for pkt in info.get("packets", []):
        if pkt.get("stream_index") != index:
            continue
        t = _float(pkt.get("pts_time"))
        if math.isnan(t):
            t = _float(pkt.get("dts_time"))
        if math.isnan(t):
            continue
        times.append(t - start)
        durations.append(_float(pkt.get("duration_time"), 0.0))
    if not times:
        raise ExtractionError(f"{video}: no video frames ({_one_line(stderr, video) if stderr.strip() else 'empty stream'})")
    frame_times = np.sort(np.asarray(times, dtype=np.float64))
    gap = float(np.median(np.diff(frame_times))) if len(frame_times) > 1 else 0.04
    # The last frame stays on screen for at least a typical frame interval (VFR muxers often give it ~0).
    last_gap = float(frame_times[-1] - frame_times[-2]) if len(frame_times) > 1 else gap
    last_end = float(frame_times[-1]) + max(durations[int(np.argmax(times))], last_gap)
    duration = _float(fmt.get("duration"), _float(vs.get("duration"), last_end))
    declared = _float(vs.get("duration"))
    if ("partial file" in stderr or "Invalid data" in stderr) or (
        not math.isnan(declared) and last_end < declared - max(0.5, 3 * gap)
    ):
        raise ExtractionError(f"{video}: truncated or corrupt video (frames stop at {last_end:.2f}s)")
    fps = _rate(vs.get("avg_frame_rate")) or _rate(vs.get("r_frame_rate"))
    has_audio = any(s.get("codec_type") == "audio" for s in streams)
    return _Probe(
        duration=duration, video_end=last_end,
        width=int(vs.get("width") or 0), height=int(vs.get("height") or 0), fps=fps,
        frame_times=frame_times, has_audio=has_audio,
    )


def _choose_frames(times: np.ndarray, seconds: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Index of the frame nearest to k+0.5 for each second, and a time window that isolates each one."""
    targets = np.arange(seconds) + 0.5
    right = np.clip(np.searchsorted(times, targets), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    pick = np.where(np.abs(times[left] - targets) <= np.abs(times[right] - targets), left, right)
    windows = []
    for i in np.unique(pick):
        lo = times[i] - times[i - 1] if i > 0 else 1.0
        hi = times[i + 1] - times[i] if i + 1 < len(times) else 1.0
        half = max(min(lo, hi, 1.0) / 2, 1e-5)
        windows.append((times[i] - half, times[i] + half))
    return pick, windows


def _decode(video: Path, info: _Probe, seconds: int, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """One ffmpeg pass: the chosen frames as [T,size,size,3] RGB and the mono 16 kHz audio (or None)."""
    import ffmpeg  # ffmpeg-python builds the command line

    pick, windows = _choose_frames(info.frame_times, seconds)
    expr = "+".join(f"between(t,{a:.6f},{b:.6f})" for a, b in windows)
    inp = ffmpeg.input(str(video))
    vid = inp.video.filter("select", expr).filter("scale", size, size).filter("showinfo")
    outputs = [ffmpeg.output(vid, "pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")]
    with tempfile.TemporaryDirectory(prefix="stapipe-audio-") as tmp:
        audio_path = Path(tmp) / "audio.f32"
        if info.has_audio:
            aud = inp["a:0"].filter("aresample", SAMPLE_RATE, **{"async": 1, "first_pts": 0})
            outputs.append(ffmpeg.output(aud, str(audio_path), format="f32le", acodec="pcm_f32le", ac=1))
        cmd = ffmpeg.merge_outputs(*outputs).global_args(
            "-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+info").compile(cmd=ffmpeg_exe())
        proc = subprocess.run(cmd, capture_output=True, check=False)
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode != 0:
            errors = [ln for ln in stderr.splitlines() if "[error]" in ln or "[fatal]" in ln]
            raise ExtractionError(f"{video}: ffmpeg failed ({_one_line(errors[-1] if errors else stderr, video)})")
        audio = np.fromfile(audio_path, dtype="<f4") if info.has_audio and audio_path.exists() else None
    frame_bytes = size * size * 3
    got = np.frombuffer(proc.stdout, dtype=np.uint8)
    shown = np.array([float(m.group(3)) for m in _SHOWINFO.finditer(stderr)], dtype=np.float64)
    if got.size % frame_bytes or got.size // frame_bytes != len(shown):
        raise ExtractionError(f"{video}: decoder output does not match its frame count")
    frames = got.reshape(-1, size, size, 3)
    if seconds and len(shown) == 0:
        raise ExtractionError(f"{video}: truncated or corrupt video (no decodable frame)")
    chosen = info.frame_times[pick]
    if len(shown) and seconds:
        # Map each second to the delivered frame whose real timestamp is closest to the chosen one.
        idx = np.abs(shown[None, :] - chosen[:, None]).argmin(axis=1)
        miss = np.abs(shown[idx] - chosen)
        if np.any(miss > 0.5):
            k = int(np.argmax(miss))
            raise ExtractionError(f"{video}: truncated or corrupt video (no decodable frame near {k + 0.5:.1f}s)")
        frames = frames[idx]
    return np.ascontiguousarray(frames), audio


def log_spectrograms(audio: np.ndarray | None, seconds: int) -> tuple[np.ndarray, np.ndarray]:
    """[T,81,199] standardised log power spectrograms and the [T] validity mask, all seconds at once."""
    out = np.zeros((seconds, N_FREQ, N_TIME), dtype=np.float32)
    valid = np.zeros(seconds, dtype=bool)
    if audio is None or seconds == 0:
        return out, valid
    covered = np.clip(len(audio) - np.arange(seconds) * SAMPLE_RATE, 0, SAMPLE_RATE)
    valid = covered >= MIN_AUDIO_FRACTION * SAMPLE_RATE
    if not valid.any():
        return out, valid
    chunks = np.zeros((seconds, SAMPLE_RATE), dtype=np.float64)
    flat = audio[: seconds * SAMPLE_RATE].astype(np.float64)
    chunks.reshape(-1)[: len(flat)] = flat
    out[valid] = standardised_log_spectrograms(chunks[valid])
    return out, valid


def standardised_log_spectrograms(chunks: np.ndarray) -> np.ndarray:
    """[N, 16000] one-second sample windows → [N, 81, 199] float32 features (SPEC §2)."""
    _, _, spec = signal.spectrogram(chunks, fs=SAMPLE_RATE, nperseg=NPERSEG, noverlap=NOVERLAP, axis=-1)
    logs = np.log(spec + 1e-7)
    mean = logs.mean(axis=(1, 2), keepdims=True)
    std = logs.std(axis=(1, 2), keepdims=True)
    return ((logs - mean) / (std + 1e-9)).astype(np.float32)


def _params(size: int) -> dict[str, int]:
    return {"size": size, "sample_rate": SAMPLE_RATE, "nperseg": NPERSEG, "noverlap": NOVERLAP,
            "format_version": FORMAT_VERSION}


def _up_to_date(out: Path, sha: str, size: int) -> ExtractionResult | None:
    try:
        with h5py.File(out, "r") as h5:
            attrs = dict(h5.attrs)
            if attrs.get("source_sha256") != sha or any(
                int(attrs.get(k, -1)) != v for k, v in _params(size).items()
            ) or not {"frames", "audio", "audio_valid"} <= set(h5):
                return None
            valid = h5["audio_valid"][()]
            return ExtractionResult(
                path=out, video_id=str(attrs["video_id"]), seconds=int(h5["frames"].shape[0]),
                audio_seconds=int(valid.sum()), fps=float(attrs["fps"]), duration=float(attrs["duration"]),
                width=int(attrs["width"]), height=int(attrs["height"]), skipped=True,
            )
    except (OSError, KeyError, ValueError):
        return None


def _write(out: Path, frames: np.ndarray, audio: np.ndarray, valid: np.ndarray, attrs: dict[str, object]) -> None:
    """Write to a temporary name in the same directory and rename, so readers never see half a file."""
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with h5py.File(tmp, "w") as h5:
            t = frames.shape[0]
            h5.create_dataset("frames", data=frames, chunks=(1, *frames.shape[1:]) if t else None)
            h5.create_dataset("audio", data=audio, chunks=(1, N_FREQ, N_TIME) if t else None)
            h5.create_dataset("audio_valid", data=valid)
            for key, value in attrs.items():
                h5.attrs[key] = value
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def extract_video(video: str | Path, out: str | Path, *, size: int = 356, video_id: str | None = None) -> ExtractionResult:
    """Extract one video to ``out`` (HDF5, SPEC §2); keeps an existing output made from the same bytes.

    Raises :class:`ExtractionError` with a one-line reason for input that cannot be extracted; no
    output (not even a partial one) is left behind in that case.
    """
    video, out = Path(video), Path(out)
    if size < 1:
        raise ValueError("size must be positive")
    if not video.exists():
        raise ExtractionError(f"{video}: no such file")
    if not video.is_file():
        raise ExtractionError(f"{video}: not a regular file")
    if video.stat().st_size == 0:
        raise ExtractionError(f"{video}: empty file (0 bytes)")
    video_id = video_id or video.stem
    sha = sha256_file(video)
    if out.exists() and (done := _up_to_date(out, sha, size)) is not None:
        return done
    info = probe(video)
    seconds = max(int(math.floor(min(info.duration, info.video_end) + 1e-3)), 0)
    if seconds:
        frames, audio = _decode(video, info, seconds, size)
    else:
        frames, audio = np.zeros((0, size, size, 3), np.uint8), None
    spectra, valid = log_spectrograms(audio, seconds)
    attrs: dict[str, object] = {
        "video_id": video_id, "fps": info.fps, "duration": info.duration, "width": info.width,
        "height": info.height, "source_sha256": sha, "source_name": video.name, **_params(size),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, frames, spectra, valid, attrs)
    return ExtractionResult(
        path=out, video_id=video_id, seconds=seconds, audio_seconds=int(valid.sum()), fps=info.fps,
        duration=info.duration, width=info.width, height=info.height, skipped=False,
    )
