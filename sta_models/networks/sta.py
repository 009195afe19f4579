"""The STA network (SPEC §6): spatial + temporal + audio saliency from three frames and their audio.

Input ``frames`` [B, 3, 3, H, W] and ``audio`` [B, 3, 1, 81, 199], both in **time order**
(t−1, t, t+1); output logits [B, 3 frames, 3 side outputs, H, W] with side outputs ordered
coarse → fine (from r4, r3, r2). The saliency of second t is ``sigmoid(logits[:, 1, 2])``.

The three frames share every weight and go through the backbone as one batch of 3B images. The
temporal mask sees the properly stacked class maps ``torch.stack([x_prev, x_cur, x_next], dim=2)``
(the public code used ``.view``, which mixes channels and time). Every spatial size is read from
the tensors, so one model runs at 64, 256 or 356 input.

Choices where the SPEC is silent (written down here because they change the numbers):
- Audio mask: exactly SA's size-agnostic :class:`~sta_models.networks.branches.AudioMask`
  (Linear 8192 → F5 width, 4×4 transposed conv, bilinear resize to F5's h×w, 1×1 → C → 1, sigmoid).
- Temporal mask: Conv3d(C → 1, (3,1,1), padding (1,0,0)) so each frame gets its own mask slice
  (:class:`TemporalConv`, a 4-D parameter so channels_last conversion works).
- Decoder convs are followed by ReLU; upsampling is bilinear (align_corners=False).
- C defaults to 28 (the method's class-map width, AVE's 28 categories).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sta_models.networks.audio import AudioNet
from sta_models.networks.backbones import Backbone
from sta_models.networks.blocks import AttentionGate, init_new_layers
from sta_models.networks.branches import AudioMask, param_groups

DEFAULT_CHANNELS = 28
FRAMES = 3  # t−1, t, t+1
CENTRE = 1
FINEST = 2


class TemporalConv(nn.Module):
    """Conv3d with a (3, 1, 1) kernel, C → 1, time padded by 1: one mask slice per frame.

    The kernel is stored as a 4-D parameter [1, C, 3, 1] (the Conv3d kernel without its last
    singleton axis) so that ``model.to(memory_format=torch.channels_last)`` — which the shared
    trainer does on CUDA and which rejects 5-D parameters — works. Initialised as every new layer
    (SPEC §3: N(0, 0.01), bias 0).
    """

    def __init__(self, channels: int, frames: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, channels, frames, 1).normal_(0.0, 0.01))
        self.bias = nn.Parameter(torch.zeros(1))
        self.padding = (frames // 2, 0, 0)

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        """[B, C, 3, h, w] → [B, 1, 3, h, w]."""
        kernel = self.weight.unsqueeze(-1).contiguous().to(stack.dtype)
        return F.conv3d(stack, kernel, self.bias.to(stack.dtype), padding=self.padding)


class STA(nn.Module):
    """STANet's final saliency network; see the module docstring for shapes."""

    def __init__(
        self,
        backbone: str = "resnext101_32x8d",
        channels: int = DEFAULT_CHANNELS,
        backbone_weights: str | Path | None = None,
        audio_weights: str | Path | None = None,
        use_cache: bool = True,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.channels = channels
        self.backbone = Backbone(backbone, until="layer4", weights=backbone_weights, use_cache=use_cache)
        self.audio = AudioNet(weights=audio_weights)
        c = channels
        ch = self.backbone.channels
        new = nn.ModuleDict({
            "proj3": nn.Conv2d(ch["layer2"], c, 1),
            "proj4": nn.Conv2d(ch["layer3"], c, 1),
            "proj5": nn.Conv2d(ch["layer4"], c, 1),
            "gate": AttentionGate(c),
            "audio_mask": AudioMask(self.audio.out_dim, ch["layer4"], c),
            "temporal": TemporalConv(c, FRAMES),
            "fuse": nn.Conv2d(3 * c, c, 1),
            "dec4": nn.Conv2d(2 * c, c, 3, padding=1),
            "dec3": nn.Conv2d(2 * c, c, 3, padding=1),
            "dec2": nn.Conv2d(2 * c, c, 3, padding=1),
            "side4": nn.Conv2d(c, 1, 1),
            "side3": nn.Conv2d(c, 1, 1),
            "side2": nn.Conv2d(c, 1, 1),
        })
        init_new_layers(new)  # only the layers the method adds; pretrained weights stay as loaded
        self.new = new

    # ------------------------------------------------------------------ bookkeeping
    @property
    def weight_sources(self) -> dict[str, str]:
        return {"backbone": self.backbone.source, "audio": self.audio.source}

    def describe(self) -> dict[str, Any]:
        """What is needed to rebuild this architecture (stored in checkpoints)."""
        return {"model": "sta", "backbone": self.backbone_name, "channels": self.channels}

    def pretrained_modules(self) -> list[nn.Module]:
        return [self.backbone, self.audio]

    # ------------------------------------------------------------------ forward
    def forward(self, frames: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 5 or frames.shape[1] != FRAMES:
            raise ValueError(f"frames must be [B, 3, 3, H, W], got {tuple(frames.shape)}")
        if audio.dim() == 4:
            audio = audio.unsqueeze(2)
        b, _, _, h_in, w_in = frames.shape
        feats = self.frame_features(frames.flatten(0, 1), audio.flatten(0, 1))  # [3B, ...], frame-major
        x = feats.x
        h5, w5 = x.shape[-2:]
        per_frame = x.unflatten(0, (b, FRAMES))  # [B, 3, C, h, w]; works for channels_last too
        t_mask = self._temporal_mask([per_frame[:, k] for k in range(FRAMES)])  # [B, 1, 3, h, w]
        t_mask = t_mask.permute(0, 2, 1, 3, 4).reshape(b * FRAMES, 1, h5, w5)  # frame-major like x
        out = self._decode(feats, t_mask, (h_in, w_in))  # [3B, 3 sides, H, W]
        return out.unflatten(0, (b, FRAMES))

    def frame_features(self, images: torch.Tensor, audio: torch.Tensor) -> FrameFeatures:
        """Everything STA computes from one frame and its audio alone: images [N, 3, H, W], audio
        [N, 1, 81, 199]. Per-frame prediction computes this once per frame and reuses it for the
        neighbours (:meth:`saliency_from_features`)."""
        n = self.new
        feats = self.backbone.forward_stages(images)
        x = n["proj5"](feats["layer4"])
        emb = self.audio(audio.to(images.dtype))
        return FrameFeatures(x0=n["proj3"](feats["layer2"]), x1=n["proj4"](feats["layer3"]), x=x,
                             a_mask=n["audio_mask"](emb, tuple(x.shape[-2:])),
                             size=(int(images.shape[-2]), int(images.shape[-1])))

    def _temporal_mask(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """Class maps of (t−1, t, t+1), each [B, C, h, w] → mask [B, 1, 3, h, w]."""
        return torch.sigmoid(self.new["temporal"](torch.stack(xs, dim=2)))

    def _decode(self, f: FrameFeatures, t_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Fusion and decoder of frames whose features and temporal mask are known: [N, 3 sides, H, W]."""
        n, x = self.new, f.x
        fused = n["fuse"](torch.cat([
            F.relu(x + n["gate"](x)),
            F.relu(x + t_mask),
            F.relu(x + x * f.a_mask),
        ], dim=1))
        r4 = F.relu(n["dec4"](torch.cat([fused, x], dim=1)))
        up4 = F.interpolate(r4, size=f.x1.shape[-2:], mode="bilinear", align_corners=False)
        r3 = F.relu(n["dec3"](torch.cat([up4, f.x1], dim=1)))
        up3 = F.interpolate(r3, size=f.x0.shape[-2:], mode="bilinear", align_corners=False)
        r2 = F.relu(n["dec2"](torch.cat([up3, f.x0], dim=1)))
        sides = [
            F.interpolate(n[name](r), size=size, mode="bilinear", align_corners=False)
            for name, r in (("side4", r4), ("side3", r3), ("side2", r2))
        ]
        return torch.cat(sides, dim=1)

    @torch.no_grad()
    def saliency(self, frames: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Saliency of the centre frame in [0, 1]: [B, H, W]."""
        return torch.sigmoid(self.forward(frames, audio)[:, CENTRE, FINEST].float())

    @torch.no_grad()
    def saliency_from_features(self, prev: FrameFeatures, cur: FrameFeatures, nxt: FrameFeatures) -> torch.Tensor:
        """The same as :meth:`saliency` from precomputed per-frame features of (t−1, t, t+1), each a
        batch of B frames: only the temporal mask, the fusion and the decoder of the centre run."""
        t_mask = self._temporal_mask([prev.x, cur.x, nxt.x])[:, :, CENTRE]  # [B, 1, h, w]
        return torch.sigmoid(self._decode(cur, t_mask, cur.size)[:, FINEST].float())


@dataclass
class FrameFeatures:
    """Per-frame tensors of STA (batch-first): projected F3/F4/F5 maps and the audio mask."""

    x0: torch.Tensor
    x1: torch.Tensor
    x: torch.Tensor
    a_mask: torch.Tensor
    size: tuple[int, int]

    def select(self, index: torch.Tensor) -> FrameFeatures:
        """The features of the frames at ``index`` (a 1-D index tensor), in that order."""
        return FrameFeatures(self.x0[index], self.x1[index], self.x[index], self.a_mask[index], self.size)

    @staticmethod
    def cat(parts: list[FrameFeatures]) -> FrameFeatures:
        x0, x1, x, a_mask = (torch.cat([getattr(p, k) for p in parts]) for k in ("x0", "x1", "x", "a_mask"))
        return FrameFeatures(x0, x1, x, a_mask, size=parts[0].size)


def sta_param_groups(model: STA) -> list[dict[str, Any]]:
    """SPEC §3 groups (backbone and audio net ×1/×2, new layers ×10/×20), as for the branches."""
    return param_groups(model)  # type: ignore[arg-type]  # duck-typed: needs pretrained_modules()


def build_sta(meta: dict[str, Any]) -> STA:
    """Rebuild the architecture from :meth:`STA.describe` (no pretrained weights are read)."""
    return STA(backbone=meta["backbone"], channels=int(meta["channels"]), use_cache=False)
