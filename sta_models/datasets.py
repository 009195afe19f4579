"""Datasets over the per-video HDF5 feature files (SPEC §2–§3) for the classifier branches.

What a branch's samples hold (one frame or a window, with or without audio) and its minimum event
length come from its entry in :mod:`sta_models.branches`.

Why it is fast: frames are stored as raw uint8 arrays, so a sample is one HDF5 slice read (no
JPEG decode), one small resize, and the batch travels to the device as uint8; ImageNet
normalisation happens there, batched (:func:`prepare_batch`). Each process keeps a bounded LRU of
open read handles keyed by pid and file identity (path, inode, size, mtime): forked workers never
share a handle, a replaced or rewritten file is opened afresh, and at most ``MAX_HANDLES`` files
stay open. The worker closes them all at the end of every stage task (:func:`close_handles`).

Augmentation: with ``train=True`` a colour jitter (0.3, 0.3, 0.3, 0.1) is drawn once per sample and
applied to all of its frames; the draw comes from the ``aug_seed`` that
``trainer.SeededSampler`` yields with each index, so it is reproducible and resumable. Plain integer
indices (evaluation, CAMs) never augment.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sta_models.branches import get_branch
from sta_models.crop_files import crop_frames, is_box_file, source_features

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
JITTER = (0.3, 0.3, 0.3, 0.1)  # brightness, contrast, saturation, hue

MAX_HANDLES = 64  # open HDF5 files per process; a real dataset has thousands of files
_HANDLES: OrderedDict[tuple[int, str, int, int, int], h5py.File] = OrderedDict()  # LRU, newest last


def feature_path(feature_dir: str | Path, row: Any) -> Path:
    """``<dir>/<row.key>.h5`` (per-row crops) when present, else ``<dir>/<video_id>.h5``.

    A per-row crop file of format 2 holds boxes only: :class:`FeatureDataset` reads the frames
    and audio from the feature file it names and crops when it reads (``sta_models.crop_files``).
    """
    feature_dir = Path(feature_dir)
    per_row = feature_dir / f"{row.key}.h5"
    return per_row if per_row.exists() else feature_dir / f"{row.video_id}.h5"


def _file_key(path: str | Path) -> tuple[int, str, int, int, int]:
    st = os.stat(path)
    return (os.getpid(), str(path), st.st_ino, st.st_size, st.st_mtime_ns)


def open_h5(path: str | Path) -> h5py.File:
    """This process's read handle on ``path`` as it is now (one ``stat`` per call).

    A handle whose file was replaced (new inode) or rewritten (size, mtime) since it was opened is
    closed and the file opened again; the least recently used handle is closed beyond
    ``MAX_HANDLES``.
    """
    key = _file_key(path)
    handle = _HANDLES.get(key)
    if handle is not None:
        _HANDLES.move_to_end(key)
        return handle
    for stale in [k for k in _HANDLES if k[:2] == key[:2]]:  # an older version of the same file
        _HANDLES.pop(stale).close()
    handle = h5py.File(path, "r")
    _HANDLES[key] = handle
    mine = [k for k in _HANDLES if k[0] == key[0]]
    for old in mine[: max(0, len(mine) - MAX_HANDLES)]:
        _HANDLES.pop(old).close()
    return handle


def open_handles() -> int:
    """How many handles this process holds open (tests and logs)."""
    pid = os.getpid()
    return sum(1 for k in _HANDLES if k[0] == pid)


def close_handles() -> None:
    """Close this process's cached handles (end of every stage task; tests)."""
    pid = os.getpid()
    for key in [k for k in _HANDLES if k[0] == pid]:
        _HANDLES.pop(key).close()


def resize_frames(frames: np.ndarray, size: int) -> torch.Tensor:
    """[N, H, W, 3] uint8 → [N, 3, size, size] uint8, bilinear with antialiasing.

    torch's uint8 antialiased kernel: ~5x faster than cv2 INTER_AREA here, and no OpenCV thread
    pool in forked DataLoader workers (cv2 calls there can deadlock after the parent used cv2).
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


_GRAY = torch.tensor([0.299, 0.587, 0.114])


def jitter_factors(seed: int, strength: Sequence[float] = JITTER) -> tuple[float, float, float, float]:
    """One ColorJitter draw (brightness, contrast, saturation, hue) from ``seed``."""
    rng = np.random.default_rng(seed)
    b, c, s, h = strength
    return (float(rng.uniform(max(0.0, 1 - b), 1 + b)), float(rng.uniform(max(0.0, 1 - c), 1 + c)),
            float(rng.uniform(max(0.0, 1 - s), 1 + s)), float(rng.uniform(-h, h)))


def jitter_matrices(factors: torch.Tensor) -> torch.Tensor:
    """[B, 4] (brightness, contrast, saturation, hue) → [B, 3, 3] colour matrices (vectorised).

    brightness → contrast (without its mean term) → saturation → hue. Saturation blends with the
    luma (torchvision's weights); hue is a rotation by ``2π·hue`` about the grey axis of the RGB
    cube (Rodrigues), which keeps greys grey, moves hues the same way as an HSV shift of the same
    angle (exactly R→G→B at 1/3 turn) and is linear. Contrast's offset is added per frame by
    :func:`apply_jitter`.
    """
    f = factors.to(torch.float64)
    b, c, s, h = f.unbind(1)
    eye = torch.eye(3, dtype=torch.float64)
    gray = _GRAY.to(torch.float64)
    sat = s[:, None, None] * eye + (1 - s)[:, None, None] * torch.ones(3, 1, dtype=torch.float64) * gray
    k = torch.full((3,), 3 ** -0.5, dtype=torch.float64)
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64)
    t = 2 * torch.pi * h
    hue = (torch.cos(t)[:, None, None] * eye + torch.sin(t)[:, None, None] * cross
           + (1 - torch.cos(t))[:, None, None] * torch.outer(k, k))
    return ((c * b)[:, None, None] * (hue @ sat)).float()


def jitter_matrix(brightness: float, contrast: float, saturation: float, hue: float) -> torch.Tensor:
    """One [3, 3] colour matrix (see :func:`jitter_matrices`)."""
    return jitter_matrices(torch.tensor([[brightness, contrast, saturation, hue]]))[0]


NO_JITTER = (1.0, 1.0, 1.0, 0.0)


def apply_jitter(x: torch.Tensor, factors: torch.Tensor, normalise: bool = False) -> torch.Tensor:
    """Per-sample colour jitter on float images in [0, 255], batched: [B, (T,) 3, H, W], factors [B, 4].

    The four adjustments compose to one affine colour transform per frame, y = A·x + o, with
    o = (1 − contrast)·brightness·(mean luma of the frame) — greys are fixed points of saturation
    and hue — so a whole batch costs one batched 3×3 matmul instead of torchvision's per-image
    RGB→HSV→RGB round trip. Differences from torchvision's ColorJitter: a fixed order (b, c, s, h),
    no clamping or uint8 rounding between steps, hue as a rotation about the grey axis.
    ``normalise=True`` folds the ImageNet normalisation into the same matmul (the clamp to
    [0, 255] becomes a per-channel clamp in normalised units).
    """
    shape = x.shape
    flat = x.reshape(shape[0], -1, 3, shape[-2] * shape[-1])  # [B, T, 3, P]
    dev, dt = x.device, x.dtype
    mats = jitter_matrices(factors.cpu()).to(dev, dt)  # [B, 3, 3]
    b, c = factors[:, 0].to(dev, dt), factors[:, 1].to(dev, dt)
    mean_luma = (flat.mean(-1) * _GRAY.to(dev, dt)).sum(-1)  # [B, T]
    offset = (((1 - c) * b)[:, None] * mean_luma)[:, :, None, None]  # [B, T, 1, 1]
    lo, hi = torch.zeros(3, 1, device=dev, dtype=dt), torch.full((3, 1), 255.0, device=dev, dtype=dt)
    if normalise:
        mean = torch.tensor(IMAGENET_MEAN, device=dev, dtype=dt)[:, None]
        scale = 1.0 / (255.0 * torch.tensor(IMAGENET_STD, device=dev, dtype=dt)[:, None])  # [3, 1]
        mats = scale * mats
        offset = scale * offset - mean * 255.0 * scale
        lo, hi = -mean * 255.0 * scale, (1 - mean) * 255.0 * scale
    n_t = flat.shape[1]
    y = torch.baddbmm(offset.expand(-1, -1, 3, 1).reshape(-1, 3, 1),  # matmul and offset in one pass
                      mats.repeat_interleave(n_t, dim=0), flat.reshape(-1, 3, flat.shape[-1]))
    return y.clamp_(lo, hi).reshape(shape)


def color_jitter(frames: torch.Tensor, seed: int, strength: Sequence[float] = JITTER) -> torch.Tensor:
    """One draw from ``seed`` applied to every frame of [N, 3, H, W] uint8 (uint8 out; for people/tests)."""
    factors = torch.tensor([jitter_factors(seed, strength)])
    return apply_jitter(frames.float()[None], factors)[0].round_().to(torch.uint8)


class FeatureDataset(Dataset):
    """Samples = event seconds of rows, read from the feature files.

    Items (dicts, default-collatable): ``image`` [3, S, S] uint8 (one-frame branches: S, SA) or
    ``frames`` [W, 3, S, S] uint8 (a window of W frames, ST: t−1, t, t+1 clamped to the event),
    ``audio`` [1, 81, 199] float32 (branches that read audio: SA; a window branch with
    ``with_audio`` gives ``audios`` [W, 1, 81, 199], each from the same second as its frame),
    ``label``, ``row`` (index into ``rows``), ``second`` and ``jitter`` [4] (the sample's colour
    jitter factors, identity unless training; applied by :func:`prepare_batch`).
    ``excluded`` counts what was left out and why (goes into the stage record); with
    ``skip_invalid_audio=False`` (CAMs) silent seconds stay in, with their zero spectrogram.
    """

    def __init__(self, rows: Sequence[Any], feature_dir: str | Path, kind: str, input_size: int,
                 *, train: bool = False, with_audio: bool | None = None,
                 skip_invalid_audio: bool = True) -> None:
        self.spec = get_branch(kind)
        self.rows, self.kind, self.input_size, self.train = list(rows), kind, input_size, train
        self.with_audio = self.spec.needs_audio if with_audio is None else with_audio
        self.paths: list[str] = []
        self.sources: list[str] = []  # where frames and audio are read: the feature file
        self.crops: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # row index -> (boxes, has_box)
        self.samples: list[tuple[int, int]] = []  # (row index, second)
        self.event: list[tuple[int, int]] = []  # per row: first and last usable second
        self.excluded: Counter[str] = Counter()
        for i, row in enumerate(self.rows):
            path = feature_path(feature_dir, row)
            self.paths.append(str(path))
            self.sources.append(str(path))
            self.event.append((row.start, row.end - 1))
            if row.end - row.start < self.spec.min_event_s:
                self.excluded["short_event_rows"] += 1
                continue
            if not path.exists():
                self.excluded["missing_file_rows"] += 1
                continue
            with h5py.File(path, "r") as f:
                if is_box_file(f):
                    n_frames = int(f.attrs["n_frames"])
                    self.sources[i] = str(source_features(path, f))
                    self.crops[i] = (f["boxes"][()], f["has_box"][()])
                else:
                    n_frames = f["frames"].shape[0]
                valid = f["audio_valid"][()] if self.with_audio and skip_invalid_audio else None
            if not Path(self.sources[i]).exists():  # a box file whose feature file is gone
                self.excluded["missing_source_rows"] += 1
                continue
            last = min(row.end, n_frames) - 1
            self.event[i] = (row.start, last)
            self.excluded["missing_seconds"] += max(0, row.end - max(row.start, n_frames))
            for k in range(row.start, last + 1):
                if valid is not None and not bool(valid[k]):
                    self.excluded["audio_invalid_samples"] += 1
                    continue
                self.samples.append((i, k))

    def __len__(self) -> int:
        return len(self.samples)

    def exclusions(self) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(self.excluded.items()) if v}

    def seconds_for(self, index: int) -> list[int]:
        """The seconds a sample reads: [k], or its window [k−1, k, k+1] clamped to the row's event."""
        i, k = self.samples[index]
        half = self.spec.window // 2
        if not half:
            return [k]
        lo, hi = self.event[i]
        return [min(hi, max(lo, k + d)) for d in range(-half, half + 1)]

    def frames_at(self, i: int, seconds: Sequence[int]) -> np.ndarray:
        """Row ``i``'s stored-size frames [n, H, W, 3] uint8 of ``seconds``, cropped where the row has boxes."""
        lo, hi = min(seconds), max(seconds)
        block = open_h5(self.sources[i])["frames"][lo : hi + 1]  # one contiguous read
        frames = block[[s - lo for s in seconds]]
        crop = self.crops.get(i)
        return frames if crop is None else crop_frames(frames, seconds, *crop)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, aug_seed = item if isinstance(item, tuple | list) else (int(item), None)
        i, k = self.samples[index]
        seconds = self.seconds_for(index)
        f = open_h5(self.sources[i])
        lo, hi = min(seconds), max(seconds)
        frames = resize_frames(self.frames_at(i, seconds), self.input_size)
        jitter = jitter_factors(aug_seed) if self.train and aug_seed is not None else NO_JITTER
        out: dict[str, Any] = {"label": int(self.rows[i].category_id), "row": i, "second": k,
                               "jitter": torch.tensor(jitter, dtype=torch.float32)}
        window = self.spec.window > 1
        out[self.spec.image_key] = frames if window else frames[0]
        if self.with_audio:
            audio = f["audio"][lo : hi + 1][[s - lo for s in seconds]]
            audio = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(1)
            out[self.spec.audio_key] = audio if window else audio[0]
        return out


def prepare_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move a collated batch to ``device``; uint8 images become float32 there, batched:
    the sample's colour jitter (``jitter`` factors, if any differs from identity), then ImageNet
    normalisation. On a GPU the whole augmentation costs the workers nothing.

    4-d images go channels_last on CUDA (the layout bf16 convolutions are fastest in).
    """
    out: dict[str, Any] = {}
    cuda = device.type == "cuda"
    jitter = batch.get("jitter")
    if isinstance(jitter, torch.Tensor) and bool((jitter != torch.tensor(NO_JITTER)).any()):
        jitter = jitter.float()
    else:
        jitter = None
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor):
            out[key] = value
            continue
        value = value.to(device, non_blocking=cuda)
        if key in ("image", "frames"):
            x = value.float()
            if jitter is not None:
                value = apply_jitter(x, jitter, normalise=True)
            else:
                shape = [1] * x.dim()
                shape[-3] = 3
                std = torch.tensor(IMAGENET_STD, device=device).view(shape)
                shift = -torch.tensor(IMAGENET_MEAN, device=device).view(shape) / std
                value = torch.addcmul(shift, x, 1.0 / (255.0 * std))  # (x / 255 − mean) / std, one pass
            if cuda and value.dim() == 4:
                value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out
