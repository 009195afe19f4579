"""Helpers for the STA tests: unit-gain re-init and hand-written feature / pseudo-GT files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn


def amplify(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise STA's new layers with unit-gain weights so that small effects are visible.

    The method's N(0, 0.01) init makes the masks ≈ 0.5 everywhere; wiring tests need signal.
    """
    from sta_models.networks.sta import TemporalConv

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.new.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.Linear | TemporalConv):
                fan_in = m.weight.shape[0] if isinstance(m, nn.ConvTranspose2d) else m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def write_features(path: Path, seconds: int, size: int = 48, seed: int = 0, video_id: str | None = None) -> Path:
    """A feature file as extraction writes it (SPEC §2), with recognisable content per second."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((seconds, size, size, 3), np.uint8)
    for k in range(seconds):
        frames[k] = (10 * k + rng.integers(0, 60, (size, size, 3))).astype(np.uint8)
        frames[k, 0, 0] = (k, k, k)  # the second is readable from pixel (0, 0)
    audio = rng.standard_normal((seconds, 81, 199)).astype(np.float32)
    audio[:, 0, 0] = np.arange(seconds)  # and from the audio's first bin
    with h5py.File(path, "w") as f:
        f["frames"] = frames
        f["audio"] = audio
        f["audio_valid"] = np.ones(seconds, bool)
        f.attrs.update(video_id=video_id or path.stem, fps=25.0, duration=float(seconds), width=size * 2,
                       height=size, size=size, sample_rate=16000, nperseg=160, noverlap=80)
    return path


def write_pseudo_gt(path: Path, seconds: list[int], canvas: int = 40, seed: int = 0) -> Path:
    """``maps`` [n, canvas, canvas] float16 (a blob whose mass is second-specific), ``seconds`` [n]."""
    yy, xx = np.mgrid[0:canvas, 0:canvas]
    maps = []
    for s in seconds:
        cy, cx = (5 + 3 * s) % canvas, (7 + 5 * s + seed) % canvas
        m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2))
        maps.append(m / m.max() * (0.5 + 0.05 * s))
    with h5py.File(path, "w") as f:
        f["maps"] = np.stack(maps).astype(np.float16)
        f["seconds"] = np.asarray(seconds, np.int32)
    return path


def tiny_rows() -> dict[str, list]:
    """Two train rows and one val row over 4-second clips (ids vid0…vid2)."""
    from sta_models.ave import AnnotationRow

    return {
        "train": [AnnotationRow("Church bell", 0, "vid0", 0, 4, 1), AnnotationRow("Bark", 2, "vid1", 0, 4, 2)],
        "val": [AnnotationRow("Clock", 16, "vid2", 0, 4, 3)],
    }


def write_tiny_dataset(root: Path, frame_size: int = 48, canvas: int = 40) -> tuple[Path, Path, dict[str, list]]:
    """Feature files and pseudo-GT for :func:`tiny_rows` (val row missing second 2's target)."""
    feats, gts = root / "features", root / "pseudo_gt"
    feats.mkdir(parents=True)
    gts.mkdir(parents=True)
    splits = tiny_rows()
    for n, row in enumerate(splits["train"] + splits["val"]):
        write_features(feats / f"{row.video_id}.h5", seconds=4, size=frame_size, seed=n)
        secs = [0, 1, 3] if row in splits["val"] else [0, 1, 2, 3]
        write_pseudo_gt(gts / f"{row.key}.h5", secs, canvas=canvas, seed=n)
    return feats, gts, splits


def tiny_config(epochs: int = 2, input_size: int = 64):
    from sta_models.config import TrainConfig

    # keep_checkpoints="all": these tests compare last.pt and extend finished runs by an epoch
    return TrainConfig(backbone="resnet18", input_size=input_size, epochs=epochs, batch_size=4, lr=1e-2,
                       decay_epochs=[5], weight_decay=1e-4, workers=0, device="cpu", seed=0,
                       keep_checkpoints="all")
