"""The networks of the classifier branches of SPEC §3 (S, SA, ST), their losses and SGD groups.

Which branches exist, what a batch feeds each and which loss it takes is declared once in
:mod:`sta_models.branches`; :func:`build_branch`, :func:`run_branch` and :func:`branch_loss` read it.

Every spatial size is derived from the input, so one model object runs at 256 (coarse) and 356
(fine). Forward passes return a :class:`BranchOutput`; :meth:`BranchOutput.cam` and
:meth:`BranchOutput.prediction` give the CAM (relu of the mean of the two class maps) and the
logits used for the frame's prediction — for ST both come from the **centre** frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from operator import add
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from sta_models.branches import BRANCHES, get_branch
from sta_models.networks.audio import AudioNet
from sta_models.networks.backbones import Backbone, Stage
from sta_models.networks.blocks import AttentionGate, ConvGRUStep, init_new_layers

NUM_CLASSES = 28  # the AVE categories (SPEC §1); class ids are positions in that list
BRANCH_KINDS = tuple(BRANCHES)  # the registry's names (kept for callers of the old constant)
ST_WEIGHTS = (0.4, 0.6)  # SPEC §3: 0.4·Σ CE(x_k) + 0.6·Σ CE(x_kk)


@dataclass
class BranchOutput:
    """Logits [B, C] and class maps [B, C, h, w]; ``pair`` indexes the two used for CAM/prediction.

    S/SA: ``logits = [l(x1), l(x2)]``. ST: ``[l(x_prev), l(x_cur), l(x_next), l(xx_prev),
    l(xx_cur), l(xx_next)]`` (maps likewise), ``pair = (1, 4)`` — the centre frame.
    """

    logits: list[torch.Tensor]
    maps: list[torch.Tensor]
    pair: tuple[int, int] = (0, 1)

    def cam(self) -> torch.Tensor:
        """relu((map1 + map2) / 2), every class channel: [B, C, h, w] (SPEC §4)."""
        i, j = self.pair
        return F.relu((self.maps[i] + self.maps[j]) / 2)

    def prediction(self) -> torch.Tensor:
        """Logits for the frame's class: mean of the pair (= GAP of the pre-relu CAM)."""
        i, j = self.pair
        return (self.logits[i] + self.logits[j]) / 2


def gap(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3))


class VisualHead(nn.Sequential):
    """SA/ST visual path after layer4: three padded 3×3 convs with ReLU, then 1×1 → C.

    Width = in_channels // 4 (512 on ResNeXt-101's 2048; SPEC leaves it open).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        width = max(in_channels // 4, 32)
        super().__init__(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes, 1),
        )


class AudioMask(nn.Module):
    """8192-d audio embedding → spatial mask [B, 1, h, w] in (0, 1) at any h×w.

    Linear → ``visual_channels`` (2048 with ResNeXt), a 4×4 transposed conv (a learned coarse
    spatial layout per sound, like the paper's deconv stack) and bilinear resize to the visual
    map's size — size-agnostic where the public code hand-edited its deconvs per input size.
    """

    def __init__(self, audio_dim: int, visual_channels: int, num_classes: int, grid: int = 4) -> None:
        super().__init__()
        mid = max(visual_channels // 8, 16)
        self.fc = nn.Linear(audio_dim, visual_channels)
        self.up = nn.ConvTranspose2d(visual_channels, mid, grid)
        self.to_classes = nn.Conv2d(mid, num_classes, 1)
        self.to_mask = nn.Conv2d(num_classes, 1, 1)

    def forward(self, emb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.fc(emb))[:, :, None, None]
        x = F.relu(self.up(x))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = F.relu(self.to_classes(x))
        return torch.sigmoid(self.to_mask(x))


class TemporalMask(nn.Module):
    """[B, C, 3, h, w] stack → [B, 1, 3, h, w] mask: Conv3d (3,1,1) then two Conv3d (1,3,3)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.t = nn.Conv3d(num_classes, num_classes, (3, 1, 1), padding=(1, 0, 0))
        self.s1 = nn.Conv3d(num_classes, num_classes, (1, 3, 3), padding=(0, 1, 1))
        self.s2 = nn.Conv3d(num_classes, 1, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.s2(F.relu(self.s1(F.relu(self.t(stack))))))


class BranchNet(nn.Module):
    """Common parts: backbone (+ audio net) = pretrained modules, the rest = new layers."""

    kind = ""  # the registered name (sta_models.branches), set by build_branch
    until: Stage = "layer4"

    def __init__(self, backbone: str, num_classes: int, backbone_weights: str | Path | None,
                 use_cache: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = Backbone(backbone, until=self.until, weights=backbone_weights, use_cache=use_cache)
        self.audio: AudioNet | None = None

    def pretrained_modules(self) -> list[nn.Module]:
        return [m for m in (self.backbone, self.audio) if m is not None]

    def new_modules(self) -> list[nn.Module]:
        pretrained = {id(m) for m in self.pretrained_modules()}
        return [m for name, m in self.named_children() if id(m) not in pretrained]

    def _init_new(self) -> None:
        for m in self.new_modules():
            init_new_layers(m)

    def logit_layers(self) -> list[nn.Module]:
        """The layers whose output is the class map x1 (kept small by the from-scratch recipe)."""
        head = getattr(self, "head", None)
        return [head[-1]] if isinstance(head, nn.Sequential) else [cast(nn.Module, self.cls)]

    def weights_record(self) -> dict[str, str]:
        rec = {"backbone": self.backbone.source}
        if self.audio is not None:
            rec["audio"] = self.audio.source
        return rec


class SBranch(BranchNet):
    """S: one frame, backbone to layer3; x1 = 1×1 → C; x2 = GRU(1×1(cat(x1, gate(x1))), x1)."""

    until = "layer3"

    def __init__(self, backbone: str = "resnext101_32x8d", num_classes: int = NUM_CLASSES,
                 backbone_weights: str | Path | None = None, use_cache: bool = True) -> None:
        super().__init__(backbone, num_classes, backbone_weights, use_cache)
        self.cls = nn.Conv2d(self.backbone.out_channels, num_classes, 1)
        self.gate = AttentionGate(num_classes)
        self.fuse = nn.Conv2d(2 * num_classes, num_classes, 1)
        self.gru = ConvGRUStep(num_classes)
        self._init_new()

    def forward(self, image: torch.Tensor) -> BranchOutput:
        x1 = self.cls(self.backbone(image))
        x2 = self.gru(self.fuse(torch.cat([x1, self.gate(x1)], dim=1)), x1)
        return BranchOutput([gap(x1), gap(x2)], [x1, x2])


class SABranch(BranchNet):
    """SA: frame + its second of audio, backbone to layer4, audio mask m (SPEC §3)."""

    audio: AudioNet  # always built here (BranchNet's is None for the audio-free branches)

    def __init__(self, backbone: str = "resnext101_32x8d", num_classes: int = NUM_CLASSES,
                 backbone_weights: str | Path | None = None, audio_weights: str | Path | None = None,
                 use_cache: bool = True) -> None:
        super().__init__(backbone, num_classes, backbone_weights, use_cache)
        self.audio = AudioNet(audio_weights)
        self.head = VisualHead(self.backbone.out_channels, num_classes)
        self.audio_mask = AudioMask(self.audio.out_dim, self.backbone.out_channels, num_classes)
        self.gate = AttentionGate(num_classes)
        self.fuse = nn.Conv2d(2 * num_classes, num_classes, 1)
        self.gru = ConvGRUStep(num_classes)
        self._init_new()

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> BranchOutput:
        x1 = self.head(self.backbone(image))
        m = self.audio_mask(self.audio(audio), x1.shape[-2:])
        a = F.relu(x1 + self.gate(x1))
        b = F.relu(x1 + x1 * m)
        x2 = self.gru(self.fuse(torch.cat([a, b], dim=1)), x1)
        return BranchOutput([gap(x1), gap(x2)], [x1, x2])


class STBranch(BranchNet):
    """ST: frames t−1, t, t+1 with shared weights; temporal mask from the properly stacked maps."""

    def __init__(self, backbone: str = "resnext101_32x8d", num_classes: int = NUM_CLASSES,
                 backbone_weights: str | Path | None = None, use_cache: bool = True) -> None:
        super().__init__(backbone, num_classes, backbone_weights, use_cache)
        self.head = VisualHead(self.backbone.out_channels, num_classes)
        self.temporal = TemporalMask(num_classes)
        self.gate = AttentionGate(num_classes)
        self.fuse = nn.Conv2d(2 * num_classes, num_classes, 3, padding=1)
        self.gru = ConvGRUStep(num_classes)
        self._init_new()

    def forward(self, frames: torch.Tensor) -> BranchOutput:
        """``frames``: [B, 3, 3, H, W] — (prev, cur, next) × RGB."""
        b, t = frames.shape[:2]
        feats = self.head(self.backbone(frames.flatten(0, 1)))  # [B*3, C, h, w], frame-major
        xs = list(feats.view(b, t, *feats.shape[1:]).unbind(dim=1))  # [x_prev, x_cur, x_next]
        mask = self.temporal(torch.stack(xs, dim=2))  # [B, 1, 3, h, w]
        xks = []
        for k, xk in enumerate(xs):
            a = F.relu(xk + self.gate(xk))
            m = F.relu(xk + xk * mask[:, :, k])
            xks.append(self.gru(self.fuse(torch.cat([a, m], dim=1)), xk))
        maps = xs + xks
        return BranchOutput([gap(x) for x in maps], maps, pair=(1, 4))


def build_branch(kind: str, backbone: str = "resnext101_32x8d", *, num_classes: int = NUM_CLASSES,
                 backbone_weights: str | Path | None = None, audio_weights: str | Path | None = None,
                 use_cache: bool = True) -> BranchNet:
    """A registered branch's network by name; ``use_cache=False`` skips torchvision's cache (tests,
    reproducibility). ``audio_weights`` goes only to branches that read audio."""
    spec = get_branch(kind)
    extra = {"audio_weights": audio_weights} if spec.needs_audio else {}
    model: BranchNet = spec.network_class()(backbone, num_classes, backbone_weights, use_cache=use_cache, **extra)
    model.kind = spec.name
    return model


def run_branch(model: BranchNet, batch: dict[str, torch.Tensor]) -> BranchOutput:
    """Call a branch on a batch from ``sta_models.datasets`` (inputs already on the device): its
    registered ``inputs``, in order."""
    return model(*(batch[k] for k in get_branch(model.kind).inputs))


def branch_loss(out: BranchOutput, target: torch.Tensor, kind: str) -> torch.Tensor:
    """The registered loss of branch ``kind`` (:func:`pair_loss` or :func:`window_loss` for the three of SPEC §3)."""
    return get_branch(kind).loss_fn()(out, target)


def pair_loss(out: BranchOutput, target: torch.Tensor) -> torch.Tensor:
    """S/SA: CE(l1) + CE(l2) (fp32 logits)."""
    ce = [F.cross_entropy(logit.float(), target) for logit in out.logits]
    return ce[0] + ce[1]


def window_loss(out: BranchOutput, target: torch.Tensor) -> torch.Tensor:
    """ST: 0.4·Σ_k CE(x_k) + 0.6·Σ_k CE(x_kk) over the three frames (fp32 logits)."""
    ce = [F.cross_entropy(logit.float(), target) for logit in out.logits]
    return ST_WEIGHTS[0] * reduce(add, ce[:3]) + ST_WEIGHTS[1] * reduce(add, ce[3:])


LR_MULTS = {"backbone_weight": 1.0, "backbone_bias": 2.0, "new_weight": 10.0, "new_bias": 20.0}


def param_groups(model: BranchNet) -> list[dict[str, Any]]:
    """The four SGD groups of SPEC §3, each with ``name`` and ``lr_mult``.

    "Backbone" = the pretrained-role networks (visual backbone and the audio network);
    "bias" = every 1-d ``*.bias`` tensor (BatchNorm biases included); NetVLAD centroids are weights.
    """
    groups: dict[str, list[nn.Parameter]] = {k: [] for k in LR_MULTS}
    pretrained = {id(p) for m in model.pretrained_modules() for p in m.parameters()}
    for name, p in model.named_parameters():
        role = "backbone" if id(p) in pretrained else "new"
        kind = "bias" if name.endswith(".bias") else "weight"
        groups[f"{role}_{kind}"].append(p)
    return [{"name": k, "params": v, "lr_mult": LR_MULTS[k]} for k, v in groups.items()]
