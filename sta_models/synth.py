"""Synthetic AVE-like datasets with a known answer (SPEC §8).

Every clip shows one class object (a saturated shape in the class's colour) circling the frame and a
grey ellipse, the silent distractor, always on the opposite side of the circle, over a muted
textured background. During the annotated event the class object sounds: a tone at the class's own
frequency (plus its octave) over faint noise; outside it there is only the noise. The object never
passes through the centre, so a centre-bias baseline scores poorly against the true saliency.

The true saliency of second k is sampled at k + 0.5 s (a frame time at the generator's 10 fps):
a Gaussian around the class object (``eyeMap``, JPEG) and a few fixations drawn around it
(``fixMap``, MAT, binary), in the STAViS layout, numbered from 1. The object is visible for the
whole clip, so the ground truth follows it in every second, event or not.
"""

from __future__ import annotations

import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sta_models.ave import CATEGORIES
from sta_models.ffmpeg_tools import ffmpeg_exe

FPS = 10
SAMPLE_RATE = 16000
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = (
    (235, 30, 30), (30, 200, 40), (30, 70, 235), (245, 220, 20),
    (225, 30, 225), (20, 215, 225), (250, 140, 0), (140, 40, 210),
)
DISTRACTOR_GREY = (150, 150, 150)
N_FIXATIONS = 12


def class_tone(class_id: int) -> float:
    """The class's tone in Hz: centred on spectrogram bin 3 + 2c (bins are 100 Hz), below 6 kHz for 28 classes."""
    return 300.0 + 200.0 * class_id


def class_look(class_id: int) -> tuple[str, tuple[int, int, int]]:
    """(shape, RGB colour); distinct for all 28 classes."""
    return SHAPES[class_id % len(SHAPES)], COLOURS[(class_id + class_id // len(SHAPES)) % len(COLOURS)]


@dataclass(frozen=True)
class _Clip:
    video_id: str
    class_id: int
    start: int
    end: int
    seed: int


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return np.maximum(ax, ay) <= 0.85 * r
    if shape == "triangle":
        return (dy <= 0.75 * r) & (dy >= -r) & (ax <= 0.6 * (dy + r))
    if shape == "diamond":
        return ax + ay <= 1.15 * r
    if shape == "cross":
        return ((ax <= r / 3) & (ay <= r)) | ((ay <= r / 3) & (ax <= r))
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.5 * r) ** 2)
    raise ValueError(shape)


def _trajectory(rng: np.random.Generator, times: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Object centre (x, y) on an ellipse around the frame centre; the distractor sits at theta + pi."""
    theta0 = rng.uniform(0, 2 * np.pi)
    omega = rng.uniform(0.6, 1.2) * rng.choice([-1.0, 1.0])
    ax, ay = 0.28 * w * rng.uniform(0.95, 1.05), 0.25 * h * rng.uniform(0.95, 1.05)
    theta = theta0 + omega * times
    return np.stack([w / 2 + ax * np.cos(theta), h / 2 + ay * np.sin(theta)]), np.stack(
        [w / 2 - ax * np.cos(theta), h / 2 - ay * np.sin(theta)]
    )


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Muted, low-contrast texture: coarse noise blown up plus faint stripes."""
    import cv2

    coarse = rng.uniform(70, 140, size=(h // 12 + 2, w // 12 + 2, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = 8 * np.sin((xx + 0.5 * yy) / rng.uniform(3, 6))[..., None]
    grey = smooth.mean(axis=2, keepdims=True)
    return np.clip(0.5 * smooth + 0.5 * grey + stripes, 0, 255).astype(np.float32)


def _render(clip: _Clip, seconds: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames [F,H,W,3] uint8, audio [N] float32 and the object centre at each k+0.5 [seconds, 2]."""
    rng = np.random.default_rng(clip.seed)
    times = np.arange(seconds * FPS) / FPS
    obj, dis = _trajectory(rng, times, w, h)
    r = 0.16 * min(w, h)
    shape, colour = class_look(clip.class_id)
    xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    frames = np.broadcast_to(_background(rng, w, h), (len(times), h, w, 3)).copy()
    dxd = (xs[None, None, :] - dis[0][:, None, None]) / 1.4
    dyd = (ys[None, :, None] - dis[1][:, None, None]) / 0.65
    frames[dxd**2 + dyd**2 <= r**2] = DISTRACTOR_GREY
    mask = _shape_mask(shape, xs[None, None, :] - obj[0][:, None, None], ys[None, :, None] - obj[1][:, None, None], r)
    frames[mask] = colour
    centres = obj[:, FPS // 2 :: FPS].T[:seconds]  # frame k*FPS + FPS/2 is at k + 0.5 s

    n = seconds * SAMPLE_RATE
    t = np.arange(n) / SAMPLE_RATE
    audio = rng.normal(0.0, 0.004, n)
    f0 = class_tone(clip.class_id)
    tone = 0.3 * np.sin(2 * np.pi * f0 * t) + (0.1 * np.sin(4 * np.pi * f0 * t) if 2 * f0 < 7500 else 0.0)
    env = np.clip(np.minimum(t - clip.start, clip.end - t) / 0.01, 0.0, 1.0)  # 10 ms fades inside the event
    audio += tone * env
    return frames.astype(np.uint8), audio.astype(np.float32), centres


def _encode(frames: np.ndarray, audio: np.ndarray, path: Path, w: int, h: int) -> None:
    """H.264 + AAC MP4; single-threaded bit-exact encoding so a seed always gives the same bytes."""
    from scipy.io import wavfile

    with tempfile.TemporaryDirectory(prefix="stapipe-synth-") as tmp:
        wav = Path(tmp) / "a.wav"
        wavfile.write(wav, SAMPLE_RATE, audio)
        cmd = [
            ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(FPS), "-i", "pipe:",
            "-i", str(wav), "-map", "0:v", "-map", "1:a",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "16", "-pix_fmt", "yuv420p", "-threads", "1",
            "-c:a", "aac", "-b:a", "96k", "-flags", "+bitexact", "-fflags", "+bitexact",
            "-map_metadata", "-1", "-movflags", "+faststart", str(path),
        ]
        proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg could not encode {path.name}: {proc.stderr.decode(errors='replace').strip()}")


def _saliency(centres: np.ndarray, w: int, h: int, r: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Continuous maps [T,H,W] uint8 (Gaussian, sigma = object radius) and binary fixations [T,H,W]."""
    xs, ys = np.arange(w), np.arange(h)
    g = np.exp(-((xs[None, None, :] - centres[:, 0, None, None]) ** 2
                 + (ys[None, :, None] - centres[:, 1, None, None]) ** 2) / (2 * r**2))
    maps = np.round(255 * g / g.max(axis=(1, 2), keepdims=True)).astype(np.uint8)
    fix = np.zeros((len(centres), h, w), dtype=np.uint8)
    pts = centres[:, None, :] + rng.normal(0, r / 2, size=(len(centres), N_FIXATIONS, 2))
    pts = np.concatenate([centres[:, None, :], pts], axis=1)
    px = np.clip(np.round(pts[..., 0]).astype(int), 0, w - 1)
    py = np.clip(np.round(pts[..., 1]).astype(int), 0, h - 1)
    fix[np.arange(len(centres))[:, None], py, px] = 1
    return maps, fix


def _make_clip(clip: _Clip, root: Path, seconds: int, w: int, h: int) -> None:
    import cv2
    from scipy.io import savemat

    frames, audio, centres = _render(clip, seconds, w, h)
    _encode(frames, audio, root / "AVE" / f"{clip.video_id}.mp4", w, h)
    maps, fix = _saliency(centres, w, h, 0.16 * min(w, h), np.random.default_rng(clip.seed + 1))
    gt = root / "annotations" / clip.video_id
    (gt / "maps").mkdir(parents=True, exist_ok=True)
    for k in range(seconds):
        cv2.imwrite(str(gt / "maps" / f"eyeMap_{k + 1:05d}.jpg"), maps[k], [cv2.IMWRITE_JPEG_QUALITY, 95])
        savemat(gt / f"fixMap_{k + 1:05d}.mat", {"eyeMap": fix[k]}, do_compression=True)


def _plan(classes: int, videos_per_class: int, seconds: int, seed: int) -> dict[str, list[_Clip]]:
    """Clips per split; every split holds every class. One clip in four has a shorter event (>= 3 s)."""
    rng = np.random.default_rng(seed)
    n_eval = max(1, round(0.15 * videos_per_class))
    splits: dict[str, list[_Clip]] = {"train": [], "val": [], "test": []}
    for c in range(classes):
        for i in range(videos_per_class):
            start, end = 0, seconds
            if seconds >= 4 and i % 4 == 3:
                length = max(3, seconds - 1 - int(rng.integers(0, max(1, seconds - 3))))
                start = int(rng.integers(0, seconds - length + 1))
                end = start + length
            clip = _Clip(f"syn{seed % 1000:03d}c{c:02d}v{i:03d}", c, start, end, int(rng.integers(0, 2**31)))
            split = "val" if i < n_eval else "test" if i < 2 * n_eval else "train"
            splits[split].append(clip)
    return splits


def _line(clip: _Clip) -> str:
    return f"{CATEGORIES[clip.class_id]}&{clip.video_id}&good&{clip.start}&{clip.end}"


def generate(
    out_dir: str | Path, *, classes: int = 3, videos_per_class: int = 4, seconds: int = 4,
    size: tuple[int, int] = (128, 96), seed: int = 0,
) -> Path:
    """Write an AVE-layout dataset to ``out_dir`` and return it; ``size`` is (width, height), even."""
    if not 1 <= classes <= len(CATEGORIES):
        raise ValueError(f"classes must be between 1 and {len(CATEGORIES)}")
    if videos_per_class < 3:
        raise ValueError("videos_per_class must be at least 3 (every split needs every class)")
    if seconds < 1:
        raise ValueError("seconds must be at least 1")
    w, h = size
    if w < 32 or h < 32 or w % 2 or h % 2:
        raise ValueError("size must be even and at least 32x32 (H.264 with 4:2:0 chroma)")
    root = Path(out_dir)
    (root / "AVE").mkdir(parents=True, exist_ok=True)
    splits = _plan(classes, videos_per_class, seconds, seed)
    clips = [c for name in ("train", "val", "test") for c in splits[name]]
    with ThreadPoolExecutor(max_workers=2) as pool:  # ffmpeg runs outside the GIL
        list(pool.map(lambda c: _make_clip(c, root, seconds, w, h), clips))
    (root / "Annotations.txt").write_text("".join(_line(c) + "\n" for c in clips), encoding="utf-8")
    for name, file in (("train", "trainSet.txt"), ("val", "valSet.txt"), ("test", "testSet.txt")):
        (root / file).write_text("".join(_line(c) + "\n" for c in splits[name]), encoding="utf-8")
    return root
