"""The two small building blocks of SPEC §3: the self-attention gate and a 1×1 ConvGRU step."""

from __future__ import annotations

import torch
from torch import nn


class AttentionGate(nn.Module):
    """Self-attention gate on a C-channel class map: returns ``sigmoid(conv(h·A)) ⊙ x``.

    f, g: 1×1 C→C/2; h: 1×1 C→C; A = softmax over positions of fᵀg (SAGAN-style, the attended
    value at position i is Σ_j A[i, j]·h[:, j]); mask = sigmoid(1×1 C→1 of y). Works at any h×w.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        mid = max(channels // 2, 1)
        self.f = nn.Conv2d(channels, mid, 1)
        self.g = nn.Conv2d(channels, mid, 1)
        self.h = nn.Conv2d(channels, channels, 1)
        self.mask = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        q = self.f(x).flatten(2).transpose(1, 2)  # [B, N, C/2]
        k = self.g(x).flatten(2)  # [B, C/2, N]
        attn = torch.softmax(torch.bmm(q, k), dim=-1)  # [B, N, N]
        v = self.h(x).flatten(2)  # [B, C, N]
        y = torch.bmm(v, attn.transpose(1, 2)).view(b, c, hh, ww)
        return torch.sigmoid(self.mask(y)) * x


class ConvGRUStep(nn.Module):
    """One ConvGRU update with 1×1 kernels: z, r gates on [in, prev]; ĥ on [in, r⊙prev]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.wz = nn.Conv2d(2 * channels, channels, 1)
        self.wr = nn.Conv2d(2 * channels, channels, 1)
        self.wo = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, inp: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        both = torch.cat([inp, prev], dim=1)
        z = torch.sigmoid(self.wz(both))
        r = torch.sigmoid(self.wr(both))
        cand = torch.tanh(self.wo(torch.cat([inp, r * prev], dim=1)))
        return prev * (1 - z) + cand * z


def init_new_layers(module: nn.Module) -> None:
    """SPEC §3 init for layers the method adds: weights N(0, 0.01), biases 0 (conv/linear only)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
