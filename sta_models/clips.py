"""Clips as frame sequences for per-frame prediction: STAViS frame folders (+ WAV) or video files.

The published audio-visual saliency sets (AVAD, DIEM, SumMe, ETMD, Coutrot1/2) come in the
STAViS layout: ``video_frames/<DB>/<video>/img_%05d.jpg`` and ``video_audio/<DB>/<video>/<video>.wav``.
Frame f (1-based) is shown at t = (f − 1)/fps. A frame folder carries no frame rate, so it comes
from ``--fps``: a number, or a STAViS fold list (``<video> <nframes> <fps>`` per line, the files
``fold_lists/<DB>_list_test_<split>_fps.txt``) giving each video its own rate.

A missing WAV is silent audio (zeros, every window invalid) and is marked on the clip
(``audio_note``), never an error. Video files are decoded once, at the model's frame size, into a
raw file in the cache (random access without holding the clip in memory); their frame rate is the
stream's average rate and frame i is taken to be at i/fps (constant rate).
"""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sta_models.extraction import SAMPLE_RATE, ExtractionError, probe, standardised_log_spectrograms
from sta_models.ffmpeg_tools import ffmpeg_exe

FRAME_GLOB = "img_*.jpg"
_NUM = re.compile(r"(\d+)$")
MIN_AUDIO_FRACTION = 0.5  # a window is valid audio when at least half of it lies inside the track


class ClipError(ValueError):
    """A clip that cannot be read; ``str()`` is a one-line reason naming it."""


@dataclass
class FrameClip:
    """One clip: ``n_frames`` frames at ``fps``, readable by index; mono 16 kHz audio or None."""

    video_id: str
    n_frames: int
    fps: float
    width: int
    height: int
    audio: np.ndarray | None
    audio_note: str
    frame_files: list[Path] = field(default_factory=list)  # frame folders
    raw: Path | None = None  # decoded video files: [n, size, size, 3] uint8
    raw_size: int = 0
    source: Path | None = None  # the video file (overlays keep its audio)
    wav: Path | None = None

    def read(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """RGB uint8 frames [n, H, W, 3] (0-based indices); decoded videos come at the frame size."""
        if self.raw is not None:
            mm = np.memmap(self.raw, dtype=np.uint8, mode="r", shape=(self.n_frames, self.raw_size, self.raw_size, 3))
            return np.ascontiguousarray(mm[np.asarray(indices)])
        out = []
        for i in indices:
            img = cv2.imread(str(self.frame_files[int(i)]), cv2.IMREAD_COLOR)
            if img is None:
                raise ClipError(f"{self.video_id}: cannot read frame {self.frame_files[int(i)].name}")
            out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        return np.stack(out)

    def times(self) -> np.ndarray:
        """Presentation time of every frame, seconds: (f − 1)/fps for 1-based frame f."""
        return np.arange(self.n_frames) / self.fps

    def audio_features(self, indices: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Spectrograms [n, 81, 199] of the 1-s windows centred on the frames' times, and validity [n]."""
        return audio_windows(self.audio, np.asarray(indices) / self.fps)


def frame_neighbours(n_frames: int, fps: float, spacing_s: float = 1.0) -> np.ndarray:
    """[n, 3] 0-based indices of the frames nearest t − 1 s, t and t + 1 s, clamped to the clip."""
    i = np.arange(n_frames)
    step = spacing_s * fps
    prev = np.clip(np.rint(i - step).astype(int), 0, n_frames - 1)
    nxt = np.clip(np.rint(i + step).astype(int), 0, n_frames - 1)
    return np.stack([prev, i, nxt], axis=1)


def audio_windows(audio: np.ndarray | None, centres_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features of 1-s windows centred on ``centres_s`` (silence outside the track): the SPEC §2
    spectrogram of each window; a window less than half inside the track is zeros and invalid."""
    n = len(centres_s)
    out = np.zeros((n, 81, 199), np.float32)
    valid = np.zeros(n, bool)
    if audio is None or n == 0 or len(audio) == 0:
        return out, valid
    starts = np.rint((np.asarray(centres_s, np.float64) - 0.5) * SAMPLE_RATE).astype(np.int64)
    lo = np.clip(starts, 0, len(audio))
    hi = np.clip(starts + SAMPLE_RATE, 0, len(audio))
    valid = (hi - lo) >= MIN_AUDIO_FRACTION * SAMPLE_RATE
    if not valid.any():
        return out, valid
    chunks = np.zeros((int(valid.sum()), SAMPLE_RATE), np.float64)
    for row, j in enumerate(np.flatnonzero(valid)):
        chunks[row, lo[j] - starts[j] : hi[j] - starts[j]] = audio[lo[j] : hi[j]]
    out[valid] = standardised_log_spectrograms(chunks)
    return out, valid


def read_wav(path: Path) -> np.ndarray:
    """A WAV file as mono float64 at 16 kHz (any rate, integer or float samples)."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    try:
        rate, data = wavfile.read(str(path))
    except (ValueError, OSError) as exc:
        raise ClipError(f"{path.name}: not a readable WAV ({' '.join(str(exc).split())})") from exc
    x = np.asarray(data)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float64) / float(np.iinfo(x.dtype).max)
    x = x.astype(np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = math.gcd(int(rate), SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, int(rate) // g)
    return x


# ------------------------------------------------------------------------------------------------
# Frame rates
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameRates:
    """Per-video frame rates: a fold list's entries, else ``default`` (None = not known)."""

    default: float | None = None
    per_video: dict[str, float] = field(default_factory=dict)
    source: str = "none"

    def of(self, video_id: str) -> float | None:
        return self.per_video.get(video_id, self.default)


def read_fold_list(path: Path) -> dict[str, float]:
    """``<video> <nframes> <fps>`` lines (STAViS ``fold_lists/*_fps.txt``) → video → fps."""
    out: dict[str, float] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            fps = float(parts[-1])
        except ValueError as exc:
            raise ClipError(f"{path}:{n}: expected '<video> <nframes> <fps>', got {line.strip()!r}") from exc
        if len(parts) < 2 or not fps > 0:
            raise ClipError(f"{path}:{n}: expected '<video> <nframes> <fps>', got {line.strip()!r}")
        out[parts[0]] = fps
    return out


def parse_fps(spec: str | float | None) -> FrameRates:
    """``--fps``: a positive number, or a fold-list file (or a folder of ``*_fps.txt`` lists)."""
    if spec is None or spec == "":
        return FrameRates()
    try:
        value = float(spec)
    except (TypeError, ValueError):
        path = Path(str(spec))
        files = sorted(path.glob("*_fps.txt")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise ClipError(f"--fps {spec}: neither a number nor a fold list (<video> <nframes> <fps>)") from None
        rates: dict[str, float] = {}
        for f in files:
            rates.update(read_fold_list(f))
        return FrameRates(per_video=rates, source=str(path))
    if not (value > 0 and math.isfinite(value)):
        raise ClipError(f"--fps must be a positive number, got {spec}")
    return FrameRates(default=value, source=f"--fps {value:g}")


# ------------------------------------------------------------------------------------------------
# Opening clips
# ------------------------------------------------------------------------------------------------


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(path.glob(FRAME_GLOB))


def list_frame_folders(root: Path) -> list[Path]:
    """``root/<video>/img_*.jpg`` folders (sorted); ``root`` itself when it is one."""
    if is_frame_folder(root):
        return [root]
    return sorted(p for p in root.iterdir() if is_frame_folder(p)) if root.is_dir() else []


def _numbered(files: list[Path]) -> list[Path]:
    def key(p: Path) -> int:
        m = _NUM.search(p.stem)
        return int(m.group(1)) if m else -1

    return sorted(files, key=key)


def open_frame_folder(folder: Path, fps: float | None, audio_root: Path | None) -> FrameClip:
    """A STAViS frame folder; its WAV is ``audio_root/<video>/<video>.wav`` (or ``audio_root/<video>.wav``)."""
    video_id = folder.name
    if fps is None:
        raise ClipError(f"{video_id}: a frame folder has no frame rate; give --fps N or a fold list")
    files = _numbered(list(folder.glob(FRAME_GLOB)))
    first = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
    if first is None:
        raise ClipError(f"{video_id}: cannot read frame {files[0].name}")
    wav = None
    if audio_root is not None:
        wav = next((p for p in (audio_root / video_id / f"{video_id}.wav", audio_root / f"{video_id}.wav")
                    if p.is_file()), None)
    audio = read_wav(wav) if wav is not None else None
    note = f"wav {wav.name}" if wav is not None else "silent: no WAV found (audio treated as silence)"
    return FrameClip(video_id=video_id, n_frames=len(files), fps=float(fps), width=first.shape[1],
                     height=first.shape[0], audio=audio, audio_note=note, frame_files=files, wav=wav)


def open_video(video: Path, cache: Path, size: int, fps: float | None = None) -> FrameClip:
    """Decode every frame of a video file at ``size``×``size`` into ``cache`` and its audio to 16 kHz."""
    info = probe(video)  # raises ExtractionError with a one-line reason
    rate = float(fps or info.fps)
    if not rate > 0:
        raise ClipError(f"{video.name}: unknown frame rate; give --fps")
    raw = cache / f"{video.stem}.frames{size}.u8"
    audio_path = cache / f"{video.stem}.audio.f32"
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(video), "-map", "0:v:0",
           "-vf", f"scale={size}:{size}", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", str(raw)]
    if info.has_audio:
        cmd += ["-map", "0:a:0", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", str(audio_path)]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ExtractionError(f"{video}: ffmpeg failed ({lines[-1] if lines else 'no details'})")
    n = raw.stat().st_size // (size * size * 3)
    if n == 0:
        raise ExtractionError(f"{video}: no decodable frame")
    audio = np.fromfile(audio_path, dtype="<f4").astype(np.float64) if info.has_audio and audio_path.exists() else None
    note = "from the video" if audio is not None else "silent: the video has no audio stream"
    return FrameClip(video_id=video.stem, n_frames=int(n), fps=rate, width=info.width, height=info.height,
                     audio=audio, audio_note=note, raw=raw, raw_size=size, source=video)
