"""Saliency prediction with a trained STA on any video (SPEC §6 "Inference").

For every whole second k of a clip, STA sees frames/audio of (k−1, k, k+1) clamped to the clip
and predicts the map of second k. Inputs are MP4s (extracted first with ``extract_video`` at the
frame size the model was trained on, into a cache directory) or ready feature files (``.h5``).

Outputs per video:
- ``out_dir/<video_id>/%05d.png``: second k → file k+1 (the STAViS numbering of
  ``eyeMap_%05d.jpg``), 8-bit grayscale at the **original video size** (the ``width``/``height``
  attributes of the feature file), each map min-max normalised to 0…255. Normalising per map keeps
  the full 8-bit range for maps whose sigmoid values are all small; every metric of SPEC §7 is
  invariant to it or normalises anyway.
- ``out_dir/<video_id>_overlay.mp4``: the JET heat map over every frame of the original video, the
  map of second k held for all frames of that second, H.264 yuv420p with the original audio as AAC
  (see ``sta_models.overlay``). For a feature-file input the original video is looked up in
  ``sources`` (video id → path), then next to the ``.h5`` (same stem, a video suffix); without
  one the overlay is made from the stored frames, one per second, silent.

Every frame (``every_frame=True``; the default for STAViS frame folders, available for video
files): ``out_dir/<video_id>/%05d.png`` for frame f (1-based), named exactly like the GT's
``eyeMap_%05d.jpg``, predicted from the frames nearest t − 1 s, t, t + 1 s with each frame's
backbone features computed once (``sta_models.every_frame``); the overlay uses the per-frame maps.
Frame folders (``<video>/img_%05d.jpg``) take their audio from ``audio_dir/<video>/<video>.wav``
(none = silence, marked) and their rate from ``fps`` (``sta_models.clips.parse_fps``).
``out_dir/<video_id>/prediction.json`` records frames, rate, its source and the audio used.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import torch

from sta_models.callbacks import NO_CALLBACKS, Callbacks
from sta_models.clips import (
    ClipError,
    FrameClip,
    FrameRates,
    is_frame_folder,
    open_frame_folder,
    open_video,
    parse_fps,
)
from sta_models.datasets import prepare_batch, resize_frames
from sta_models.every_frame import FrameStats, predict_every_frame
from sta_models.extraction import ExtractionError, extract_video
from sta_models.imageio_utils import read_map
from sta_models.jsonio import write_json_atomic
from sta_models.networks.sta import STA
from sta_models.overlay import OverlayError, write_overlay, write_overlay_frames
from sta_models.sta_training import load_sta
from sta_models.trainer import autocast_for, resolve_device

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm")
FEATURE_SUFFIX = ".h5"
DEFAULT_FRAME_SIZE = 356


@dataclass
class VideoPrediction:
    """What happened to one input: where its maps went, or the one-line reason it failed."""

    video_id: str
    source: Path
    seconds: int = 0
    png_dir: Path | None = None
    overlay: Path | None = None
    error: str | None = None
    frames: int = 0  # maps written in every-frame mode
    fps: float | None = None
    audio_note: str | None = None
    stats: FrameStats | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def list_inputs(videos: str | Path) -> list[Path]:
    """A file or frame folder, or the videos, feature files and frame folders inside a directory."""
    videos = Path(videos)
    if videos.is_file() or is_frame_folder(videos):
        return [videos]
    if not videos.is_dir():
        raise FileNotFoundError(f"{videos} does not exist")
    found = sorted(p for p in videos.iterdir()
                   if (p.is_file() and p.suffix.lower() in (*VIDEO_SUFFIXES, FEATURE_SUFFIX)) or is_frame_folder(p))
    if not found:
        raise FileNotFoundError(f"no videos (.mp4 …), feature files (.h5) or frame folders (<video>/img_*.jpg) "
                                f"in {videos}")
    return found


def clip_neighbours(n_seconds: int) -> np.ndarray:
    """[T, 3] indices (k−1, k, k+1) clamped to the clip."""
    k = np.arange(n_seconds)
    return np.stack([np.maximum(k - 1, 0), k, np.minimum(k + 1, n_seconds - 1)], axis=1)


@torch.no_grad()
def predict_features(model: STA, h5_path: str | Path, *, input_size: int, device: str | torch.device = "cpu",
                     batch_size: int = 8, out_size: tuple[int, int] | None = None,
                     callbacks: Callbacks = NO_CALLBACKS) -> np.ndarray:
    """Saliency of every second of a feature file: float32 [T, H, W] in [0, 1] (sigmoid).

    H×W = ``input_size`` unless ``out_size`` = (height, width) is given (bilinear resize).
    The model must already be on ``device`` and in eval mode.
    """
    device = torch.device(device) if isinstance(device, str) else device
    with h5py.File(h5_path, "r") as f:
        n = int(f["frames"].shape[0])
        h, w = out_size if out_size is not None else (input_size, input_size)
        out = np.zeros((n, h, w), np.float32)
        idx = clip_neighbours(n)
        for lo in range(0, n, batch_size):  # read only what a batch needs: long clips stay cheap
            callbacks.check_cancel()
            sel = idx[lo : lo + batch_size]
            first, last = int(sel.min()), int(sel.max())
            frames = resize_frames(f["frames"][first : last + 1], input_size)
            audio = torch.from_numpy(np.asarray(f["audio"][first : last + 1], dtype=np.float32)).unsqueeze(1)
            rel = torch.from_numpy(sel - first)
            batch = prepare_batch({"frames": frames[rel], "audios": audio[rel]}, device)
            with autocast_for(device):
                sal = model.saliency(batch["frames"], batch["audios"])
            for j, m in enumerate(sal.float().cpu().numpy()):
                out[lo + j] = m if m.shape == (h, w) else cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    return out


def to_uint8(saliency: np.ndarray) -> np.ndarray:
    """Min-max normalise one map to 0…255 (a constant map becomes all zeros)."""
    lo, hi = float(saliency.min()), float(saliency.max())
    if not hi > lo:
        return np.zeros(saliency.shape, np.uint8)
    return np.round((saliency - lo) / (hi - lo) * 255.0).astype(np.uint8)


def write_pngs(maps: np.ndarray, out_dir: Path) -> Path:
    """``out_dir/%05d.png`` for maps [T, H, W]; second k → file k+1."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, m in enumerate(maps):
        if not cv2.imwrite(str(out_dir / f"{k + 1:05d}.png"), to_uint8(m)):
            raise OSError(f"cannot write {out_dir / f'{k + 1:05d}.png'}")
    return out_dir


@contextmanager
def _cache(cache_dir: str | Path | None) -> Iterator[Path]:
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        yield Path(cache_dir)
        return
    with tempfile.TemporaryDirectory(prefix="stapipe-predict-") as tmp:
        yield Path(tmp)


def predict_videos(checkpoint: str | Path | dict[str, Any], videos: str | Path, out_dir: str | Path, *,
                   device: str = "auto", overlay: bool = True, batch_size: int = 8,
                   cache_dir: str | Path | None = None, sources: Mapping[str, str | Path] | None = None,
                   every_frame: bool | None = None, audio_dir: str | Path | None = None,
                   fps: FrameRates | str | float | None = None,
                   callbacks: Callbacks = NO_CALLBACKS) -> list[VideoPrediction]:
    """Predict every second of every input; see the module docstring for what is written.

    A video that cannot be read fails alone (its ``error`` says why) and the others go on; a bad
    checkpoint or an empty input directory raises ``ValueError``/``FileNotFoundError``.
    ``cache_dir`` keeps the extracted feature files (re-used when up to date); default: a
    temporary directory removed at the end. ``sources`` maps video ids of ``.h5`` inputs to their
    original videos, for overlays with the real frames and audio. ``every_frame`` None = per
    input: frame folders every frame, video and feature files every second.
    """
    inputs = list_inputs(videos)
    rates = fps if isinstance(fps, FrameRates) else parse_fps(fps)
    audio_root = Path(audio_dir) if audio_dir is not None else None
    dev = resolve_device(device)
    model, meta = load_sta(checkpoint, dev)
    input_size = int(meta["input_size"])
    frame_size = int(meta.get("frame_size") or DEFAULT_FRAME_SIZE)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[VideoPrediction] = []
    with _cache(cache_dir) as cache:
        for i, src in enumerate(inputs):
            callbacks.check_cancel()
            callbacks.on_progress(i, len(inputs), src.name)
            per_frame = is_frame_folder(src) if every_frame is None else every_frame
            if per_frame:
                results.append(_predict_frames_one(model, src, out_dir, cache, dev, input_size=input_size,
                                                   frame_size=frame_size, overlay=overlay, batch_size=batch_size,
                                                   rates=rates, audio_root=audio_root, callbacks=callbacks))
            else:
                results.append(_predict_one(model, src, out_dir, cache, dev, input_size=input_size,
                                            frame_size=frame_size, overlay=overlay, batch_size=batch_size,
                                            sources=sources or {}, callbacks=callbacks))
            callbacks.on_progress(i + 1, len(inputs), src.name)
    return results


def _predict_frames_one(model: STA, src: Path, out_dir: Path, cache: Path, device: torch.device, *,
                        input_size: int, frame_size: int, overlay: bool, batch_size: int, rates: FrameRates,
                        audio_root: Path | None, callbacks: Callbacks) -> VideoPrediction:
    """Every-frame prediction of one frame folder or video file (see the module docstring)."""
    result = VideoPrediction(video_id=src.name if src.is_dir() else src.stem, source=src)
    try:
        if src.is_dir():
            clip = open_frame_folder(src, rates.of(src.name), audio_root)
        elif src.suffix.lower() == FEATURE_SUFFIX:
            raise ValueError("a feature file holds one frame per second; every-frame maps need the video "
                             "or its frame folder")
        else:
            clip = open_video(src, cache, frame_size, rates.of(src.stem))
        result.fps, result.audio_note = clip.fps, clip.audio_note
        png_dir = out_dir / clip.video_id
        png_dir.mkdir(parents=True, exist_ok=True)
        size = (clip.width, clip.height)

        def write(i: int, m: np.ndarray) -> None:
            m = m if m.shape == size[::-1] else cv2.resize(m, size, interpolation=cv2.INTER_LINEAR)
            if not cv2.imwrite(str(png_dir / f"{i + 1:05d}.png"), to_uint8(m)):
                raise OSError(f"cannot write {png_dir / f'{i + 1:05d}.png'}")

        result.stats = predict_every_frame(model, clip, write, input_size=input_size, frame_size=frame_size,
                                           device=device, batch_size=batch_size, callbacks=callbacks)
        result.frames, result.png_dir = clip.n_frames, png_dir
        result.seconds = int(clip.n_frames / clip.fps)
        write_json_atomic(png_dir / "prediction.json", {
            "video_id": clip.video_id, "frames": clip.n_frames, "fps": clip.fps, "fps_source": rates.source
            if src.is_dir() else "the video stream", "audio": clip.audio_note, "naming": "frame f -> %05d.png",
            "neighbours": "frames nearest t-1 s, t, t+1 s (clamped), 1-s audio windows centred on them"})
        if overlay:
            maps = PngMaps(png_dir, clip.n_frames)
            target = out_dir / f"{clip.video_id}_overlay.mp4"
            if clip.source is not None:
                result.overlay = write_overlay(clip.source, maps, target, per_frame=True)
            else:
                result.overlay = write_overlay_frames(ClipFrames(clip), maps, target, fps=clip.fps,
                                                      audio_from=clip.wav)
    except (ExtractionError, ClipError, OverlayError, OSError, ValueError, KeyError) as exc:
        result.error = _one_line(f"{src.name}: {exc}")
        callbacks.log(f"predict failed: {result.error}")
    return result


class PngMaps(Sequence[np.ndarray]):
    """The written maps ``%05d.png`` as float [0, 1], read one at a time (overlays of long clips)."""

    def __init__(self, folder: Path, n: int) -> None:
        self.folder, self.n = folder, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]  # int only: no slices
        return read_map(self.folder / f"{int(i) + 1:05d}.png").astype(np.float32)


class ClipFrames(Sequence[np.ndarray]):
    """A clip's frames at their original size, read one at a time."""

    def __init__(self, clip: FrameClip) -> None:
        self.clip = clip

    def __len__(self) -> int:
        return self.clip.n_frames

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]  # int only: no slices
        return self.clip.read([int(i)])[0]


def _predict_one(model: STA, src: Path, out_dir: Path, cache: Path, device: torch.device, *, input_size: int,
                 frame_size: int, overlay: bool, batch_size: int, sources: Mapping[str, str | Path],
                 callbacks: Callbacks) -> VideoPrediction:
    is_features = src.suffix.lower() == FEATURE_SUFFIX
    result = VideoPrediction(video_id=src.stem, source=src)
    try:
        if is_features:
            h5_path = src
        else:
            h5_path = cache / f"{src.stem}.h5"
            extract_video(src, h5_path, size=frame_size, video_id=src.stem)
        with h5py.File(h5_path, "r") as f:
            result.video_id = str(f.attrs.get("video_id", src.stem))
            width = int(f.attrs.get("width", f["frames"].shape[2]))
            height = int(f.attrs.get("height", f["frames"].shape[1]))
            result.seconds = int(f["frames"].shape[0])
        if result.seconds == 0:
            raise ValueError(f"{src.name} is shorter than one second: nothing to predict")
        maps = predict_features(model, h5_path, input_size=input_size, device=device, batch_size=batch_size,
                                out_size=(height, width), callbacks=callbacks)
        result.png_dir = write_pngs(maps, out_dir / result.video_id)
        if overlay:
            norm = np.stack([to_uint8(m) for m in maps]).astype(np.float32) / 255.0
            target = out_dir / f"{result.video_id}_overlay.mp4"
            video = _source_video(src, result.video_id, sources) if is_features else src
            if video is not None:
                result.overlay = write_overlay(video, norm, target)
            else:
                with h5py.File(h5_path, "r") as f:
                    result.overlay = write_overlay_frames(f["frames"][()], norm, target, fps=1.0)
    except (ExtractionError, OverlayError, OSError, ValueError, KeyError) as exc:
        result.error = _one_line(f"{src.name}: {exc}")
        callbacks.log(f"predict failed: {result.error}")
    return result


def _source_video(h5: Path, video_id: str, sources: Mapping[str, str | Path]) -> Path | None:
    """The original video of a feature-file input: ``sources[video_id]``, else a sibling file."""
    if video_id in sources and Path(sources[video_id]).is_file():
        return Path(sources[video_id])
    for folder in dict.fromkeys((h5.parent, h5.resolve().parent)):
        for suffix in VIDEO_SUFFIXES:
            candidate = folder / f"{h5.stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
