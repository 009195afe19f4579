"""Synthetic test sets in the STAViS layout with a known **per-frame** saliency.

The published sets (AVAD, DIEM, …) cannot be downloaded here, so tests and benchmarks use clips
made like them: a frame folder per video (``video_frames/<DB>/<video>/img_%05d.jpg``), a WAV
(``video_audio/<DB>/<video>/<video>.wav``, or none), ground truth per video frame
(``annotations/<DB>/<video>/maps/eyeMap_%05d.jpg`` and ``fixMap_%05d.mat`` with variable
``eyeMap``) and a fold list ``fold_lists/<DB>_list_test_1_fps.txt`` (``<video> <nframes> <fps>``).
The sounding object moves every frame, so a map per second cannot score well against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sta_models.synth import SAMPLE_RATE, _background, _saliency, _shape_mask, class_look, class_tone


@dataclass(frozen=True)
class SynthVideo:
    """One clip: name, frame rate, length in seconds, whether it gets a WAV, its class look/tone."""

    name: str
    fps: float
    seconds: float
    wav: bool = True
    class_id: int = 0


DEFAULT_VIDEOS = (SynthVideo("clip25", 25.0, 3.0, wav=True, class_id=0),
                  SynthVideo("clip2997", 30000 / 1001, 3.0, wav=False, class_id=1))


def object_centres(video: SynthVideo, n_frames: int, w: int, h: int) -> np.ndarray:
    """[n, 2] (x, y) of the sounding object at every frame time (f − 1)/fps: a left-to-right sweep."""
    t = np.arange(n_frames) / video.fps
    u = t / video.seconds
    return np.stack([w * (0.2 + 0.6 * u), h * (0.5 + 0.25 * np.sin(2 * np.pi * u))], axis=1)


def generate_stavis(root: str | Path, db: str = "SYNTH", videos: tuple[SynthVideo, ...] = DEFAULT_VIDEOS, *,
                    size: tuple[int, int] = (80, 60), seed: int = 0) -> Path:
    """Write one STAViS-layout set named ``db`` under ``root``; returns ``root``."""
    import cv2
    from scipy.io import savemat, wavfile

    root = Path(root)
    w, h = size
    folds = root / "fold_lists"
    folds.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, video in enumerate(videos):
        rng = np.random.default_rng(seed + k)
        n = int(round(video.seconds * video.fps))
        centres = object_centres(video, n, w, h)
        r = 0.16 * min(w, h)
        shape, colour = class_look(video.class_id)
        bg = _background(rng, w, h)
        xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
        frame_dir = root / "video_frames" / db / video.name
        gt = root / "annotations" / db / video.name
        frame_dir.mkdir(parents=True, exist_ok=True)
        (gt / "maps").mkdir(parents=True, exist_ok=True)
        maps, fix = _saliency(centres, w, h, r, rng)
        for f in range(n):
            frame = bg.copy()
            frame[_shape_mask(shape, xs[None, :] - centres[f, 0], ys[:, None] - centres[f, 1], r)] = colour
            bgr = cv2.cvtColor(frame.astype(np.uint8), cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(frame_dir / f"img_{f + 1:05d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(gt / "maps" / f"eyeMap_{f + 1:05d}.jpg"), maps[f], [cv2.IMWRITE_JPEG_QUALITY, 95])
            savemat(gt / f"fixMap_{f + 1:05d}.mat", {"eyeMap": fix[f]}, do_compression=True)
        if video.wav:
            t = np.arange(int(video.seconds * SAMPLE_RATE)) / SAMPLE_RATE
            tone = 0.3 * np.sin(2 * np.pi * class_tone(video.class_id) * t) + rng.normal(0, 0.004, len(t))
            wav = root / "video_audio" / db / video.name / f"{video.name}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            wavfile.write(wav, SAMPLE_RATE, (tone * 32767).astype(np.int16))
        lines.append(f"{video.name} {n} {video.fps:.6f}")
    (folds / f"{db}_list_test_1_fps.txt").write_text("\n".join(lines) + "\n")
    return root
