"""Torchvision ResNet-family backbones cut into stages, with offline-only pretrained weights.

Weights come from an explicit file, else from torchvision's hub cache when the file is already
there; nothing is ever downloaded (the machines running this have no network). Without either the
backbone is randomly initialised and :attr:`Backbone.source` says ``"random init"`` so the run's
record is honest about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torchvision.models as tvm
from torch import nn

Stage = Literal["layer1", "layer2", "layer3", "layer4"]
STAGES: tuple[Stage, ...] = ("layer1", "layer2", "layer3", "layer4")
RANDOM_INIT = "random init"

_FACTORIES = {
    "resnext101_32x8d": (tvm.resnext101_32x8d, tvm.ResNeXt101_32X8D_Weights),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights),
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights),
}


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the network (message names the file)."""


def cached_weights_file(name: str) -> Path | None:
    """torchvision's cached ImageNet weights for ``name`` if already downloaded, else None."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(_FACTORIES)}")
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    for weights in _FACTORIES[name][1]:  # V1 first: what the method's public code used
        candidate = ckpt_dir / Path(weights.url).name
        if candidate.is_file():
            return candidate
    return None


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a file: plain, or under ``state_dict``/``model``/``model_state_dict``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"cannot read {what} weights file {path}: {first}") from exc
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{what} weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str,
              ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Copy every tensor of ``module`` from ``state``; any missing key or shape mismatch is an error."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
           if k in state and state[k].shape != v.shape]
    unexpected = [k for k in state if k not in own and not k.startswith(ignore_prefixes)]
    if missing or bad or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if bad:
            parts.append(f"{len(bad)} shape mismatches (e.g. {bad[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise WeightsError(f"{what} weights file {path} does not fit the network: {'; '.join(parts)}")
    module.load_state_dict({k: state[k] for k in own}, strict=True)


def stage_channels(layer: nn.Module) -> int:
    """Output channels of a ResNet stage, read from its last BatchNorm (works for any block type)."""
    bns = [m for m in layer.modules() if isinstance(m, nn.BatchNorm2d)]
    return bns[-1].num_features


class Backbone(nn.Module):
    """A ResNet trunk up to ``until``: ``stem``, ``layer1`` … ``until``.

    ``channels[stage]`` is each stage's width (derived from the network, e.g. layer3 = 1024 for
    ResNeXt-101/ResNet-50, 256 for ResNet-18); ``forward_stages`` returns every stage's output
    (STA needs layer2–layer4). ``source`` records where the weights came from.
    """

    def __init__(self, name: str, until: Stage = "layer4", weights: str | Path | None = None,
                 use_cache: bool = True) -> None:
        super().__init__()
        if name not in _FACTORIES:
            raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(_FACTORIES)}")
        net = _FACTORIES[name][0](weights=None)
        path = Path(weights) if weights else (cached_weights_file(name) if use_cache else None)
        if path is not None:
            state = read_state_dict(path, f"{name} backbone")
            load_into(net, state, path, f"{name} backbone")
            self.source = f"file:{path}" if weights else f"torchvision cache:{path}"
        else:
            self.source = RANDOM_INIT
        self.name = name
        self.stages: tuple[Stage, ...] = STAGES[: STAGES.index(until) + 1]
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        for stage in self.stages:
            setattr(self, stage, getattr(net, stage))
        self.channels = {stage: stage_channels(getattr(self, stage)) for stage in self.stages}
        self.out_channels = self.channels[self.stages[-1]]

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        for stage in self.stages:
            x = getattr(self, stage)(x)
            out[stage] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = getattr(self, stage)(x)
        return x
