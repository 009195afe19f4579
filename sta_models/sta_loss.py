"""STA loss (SPEC §6): BCE-with-logits + KLD over the 3 frames × 3 side outputs.

The KLD normalises every map **per image** to sum 1. The public code divided by the sum over the
whole batch, which makes one item's loss depend on the other items in the batch; here the loss of
a batch is exactly the mean of its items' losses. Both terms are computed in float32 even under
bf16/fp16 autocast, because ε = 1e-7 underflows in half precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KLD_EPS = 1e-7  # pinned by SPEC §6; float32 only


def _sum_to_one(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Divide each map of ``x`` [N, H, W] by its own sum (an all-zero map stays zero)."""
    return x / x.sum(dim=(-2, -1), keepdim=True).clamp_min(eps)


def kld_per_image(pred: torch.Tensor, target: torch.Tensor, eps: float = KLD_EPS) -> torch.Tensor:
    """KL divergence of each probability map pair, ``pred``/``target`` [..., H, W] ≥ 0 → [...].

    ``Σ G·log(ε + G/(P + ε))`` with P and G each normalised to sum 1 per map.
    """
    shape = pred.shape[:-2]
    p = _sum_to_one(pred.float().reshape(-1, *pred.shape[-2:]), eps)
    g = _sum_to_one(target.float().reshape(-1, *target.shape[-2:]), eps)
    kld = (g * torch.log(eps + g / (p + eps))).sum(dim=(-2, -1))
    return kld.reshape(shape)


def sta_loss_per_item(logits: torch.Tensor, target: torch.Tensor, eps: float = KLD_EPS) -> torch.Tensor:
    """Per-item loss: ``logits`` [B, F, S, H, W] (frames × side outputs), ``target`` [B, F, H, W] → [B].

    Every side output of frame f is compared with that frame's pseudo-GT; the terms are summed.
    """
    if logits.dim() != 5 or target.dim() != 4 or logits.shape[:2] != target.shape[:2]:
        raise ValueError(f"expected logits [B,F,S,H,W] and target [B,F,H,W], got {tuple(logits.shape)}, "
                         f"{tuple(target.shape)}")
    if logits.shape[-2:] != target.shape[-2:]:
        raise ValueError("logits and target must have the same spatial size")
    device_type = logits.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        p = logits.float()
        g = target.float().unsqueeze(2).expand_as(p)
        bce = F.binary_cross_entropy_with_logits(p, g, reduction="none").mean(dim=(-2, -1))  # [B,F,S]
        kld = kld_per_image(torch.sigmoid(p), g, eps)  # [B,F,S]
        return (bce + kld).sum(dim=(1, 2))


def sta_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = KLD_EPS) -> torch.Tensor:
    """Batch loss = mean over items of :func:`sta_loss_per_item` (a scalar, float32)."""
    return sta_loss_per_item(logits, target, eps).mean()
