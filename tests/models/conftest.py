"""Fixtures for the classifier-branch tests: tiny hand-made feature files and rows."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from sta_models.ave import AnnotationRow as Row

torch.set_num_threads(2)


def make_row(video_id: str, category_id: int, start: int, end: int) -> Row:
    return Row(category=f"class{category_id}", category_id=category_id, video_id=video_id,
               start=start, end=end, line=0)


COLORS = [(255, 40, 40), (40, 255, 40), (40, 40, 255)]


def write_features(path: Path, category_id: int, seconds: int = 4, size: int = 48, seed: int = 0,
                   invalid_audio: tuple[int, ...] = ()) -> None:
    """An extraction-format file: noise background + a class-coloured square; audio = class tone."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(60, 120, size=(seconds, size, size, 3), dtype=np.uint8)
    for k in range(seconds):
        y, x = rng.integers(0, size // 2, size=2)
        frames[k, y : y + size // 3, x : x + size // 3] = COLORS[category_id % 3]
    audio = rng.normal(size=(seconds, 81, 199)).astype(np.float32)
    audio[:, 10 + 20 * (category_id % 3), :] += 3.0
    valid = np.ones(seconds, dtype=bool)
    valid[list(invalid_audio)] = False
    with h5py.File(path, "w") as f:
        f["frames"] = frames
        f["audio"] = audio
        f["audio_valid"] = valid
        f.attrs["video_id"] = path.stem


@pytest.fixture
def tiny_split(tmp_path: Path) -> tuple[dict[str, list[Row]], Path]:
    """3 classes × 2 train videos + 1 val video each, 4 s each, 48 px frames."""
    feat = tmp_path / "features"
    feat.mkdir()
    train, val = [], []
    for c in range(3):
        for j in range(3):
            vid = f"v{c}{j}"
            write_features(feat / f"{vid}.h5", c, seed=10 * c + j)
            (val if j == 2 else train).append(make_row(vid, c, 0, 4))
    return {"train": train, "val": val}, feat


class ToyData(torch.utils.data.Dataset):
    """A linear regression set; accepts plain indices and the trainer's (index, aug_seed) pairs,
    like FeatureDataset. ``seed`` defaults to ``n``."""

    def __init__(self, n: int, seed: int | None = None) -> None:
        g = torch.Generator().manual_seed(n if seed is None else seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 0.0])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, item):
        i = item[0] if isinstance(item, tuple) else item
        return {"x": self.x[i], "y": self.y[i]}
