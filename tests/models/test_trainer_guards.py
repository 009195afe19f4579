"""Guards of the shared trainer: CUDA memory layout with 3-D convolutions, and divergence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sta_models.config import TrainConfig
from sta_models.networks import build_branch
from sta_models.trainer import fit, to_channels_last


def test_channels_last_converts_2d_convs_and_keeps_3d_ones() -> None:
    model = build_branch("st", "resnet18", num_classes=3, use_cache=False)
    with pytest.raises(RuntimeError):  # what the trainer used to call on CUDA
        model.to(memory_format=torch.channels_last)
    to_channels_last(model)
    convs2d = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    convs3d = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert convs2d and convs3d
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs2d)
    assert all(m.weight.dim() == 5 for m in convs3d)


class _Ones(torch.utils.data.Dataset):
    """The trainer's sampler yields (index, augmentation seed) pairs."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        return torch.ones(1)


class _DivergingTask:
    """A one-parameter task whose loss turns infinite on the second batch."""

    def __init__(self) -> None:
        self.calls = 0

    def build_model(self) -> nn.Module:
        return nn.Linear(1, 1)

    def param_groups(self, model: nn.Module) -> list[dict]:
        return [{"params": list(model.parameters()), "lr_mult": 1.0}]

    def train_dataset(self) -> _Ones:
        return _Ones()

    def val_dataset(self):
        return None

    def loss(self, model, batch, device):
        self.calls += 1
        out = model(batch.reshape(-1, 1)).sum()
        return (out * float("inf") if self.calls == 2 else out), 1

    def validate(self, model, loader, device):
        return {"val_loss": 0.0, "score": 0.0}

    def meta(self) -> dict:
        return {"task": "diverging"}


def test_non_finite_loss_stops_training_with_a_clear_error(tmp_path: Path) -> None:
    cfg = TrainConfig(backbone="resnet18", epochs=2, batch_size=1, workers=0, device="cpu")
    with pytest.raises(FloatingPointError, match="diverged.*lower the learning rate"):
        fit(_DivergingTask(), cfg, tmp_path)
