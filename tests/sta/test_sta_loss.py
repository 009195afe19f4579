"""STA loss: per-image KLD normalisation, batch = mean of items, float32 under autocast."""

from __future__ import annotations

import pytest
import torch

from sta_models.sta_loss import KLD_EPS, kld_per_image, sta_loss, sta_loss_per_item


def _batch(seed: int = 0, b: int = 3, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, 3, 3, size, size, generator=g) * 2
    target = torch.rand(b, 3, size, size, generator=g)
    # very different total masses per item: a whole-batch normalisation mixes them
    target[0] *= 0.05
    if b > 2:
        target[1, :, : size // 2] = 0.0
        logits[2] += 3.0
    return logits, target


def _whole_batch_kld_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The public code's defect: P and G normalised over the whole batch (must NOT match)."""
    p = torch.sigmoid(logits)
    g = target.unsqueeze(2).expand_as(p)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, g, reduction="none").mean(dim=(-2, -1))
    total = bce.sum(dim=(1, 2)).mean()
    for f in range(3):
        for s in range(3):
            pn = p[:, f, s] / p[:, f, s].sum()
            gn = g[:, f, s] / g[:, f, s].sum()
            total = total + (gn * torch.log(KLD_EPS + gn / (pn + KLD_EPS))).sum()
    return total


def test_batch_loss_is_mean_of_item_losses() -> None:
    logits, target = _batch()
    batch = sta_loss(logits, target)
    items = torch.stack([sta_loss(logits[i : i + 1], target[i : i + 1]) for i in range(len(logits))])
    assert torch.allclose(batch, items.mean(), rtol=1e-6, atol=1e-6)
    # the test discriminates: the whole-batch normalisation gives a clearly different value here
    assert abs(float(_whole_batch_kld_loss(logits, target)) - float(items.mean())) > 0.1


def test_single_item_matches_hand_formula() -> None:
    logits, target = _batch(b=1)
    expected = torch.zeros(())
    for f in range(3):
        for s in range(3):
            p, g = logits[0, f, s], target[0, f]
            bce = torch.nn.functional.binary_cross_entropy_with_logits(p, g)
            pn, gn = torch.sigmoid(p) / torch.sigmoid(p).sum(), g / g.sum()
            expected = expected + bce + (gn * torch.log(KLD_EPS + gn / (pn + KLD_EPS))).sum()
    assert torch.allclose(sta_loss_per_item(logits, target)[0], expected, rtol=1e-5)


def test_loss_decreases_as_prediction_approaches_target() -> None:
    torch.manual_seed(0)
    target = torch.zeros(2, 3, 16, 16)
    target[:, :, 4:9, 6:12] = 1.0
    target[:, :, 5:8, 7:10] = 0.6
    far = torch.randn(2, 3, 3, 16, 16)
    near = torch.logit(target.clamp(0.01, 0.99)).unsqueeze(2).expand(-1, -1, 3, -1, -1)
    losses = [float(sta_loss(torch.lerp(far, near, w), target)) for w in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(a > b for a, b in zip(losses, losses[1:], strict=False)), losses


def test_kld_zero_for_identical_maps_and_invariant_to_scale() -> None:
    g = torch.rand(4, 10, 10)
    assert torch.allclose(kld_per_image(g, g), torch.zeros(4), atol=1e-5)
    p = torch.rand(4, 10, 10)
    assert torch.allclose(kld_per_image(p * 7.0, g), kld_per_image(p, g), rtol=1e-5)


def test_loss_is_float32_under_bf16_autocast() -> None:
    logits, target = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sta_loss(logits.bfloat16(), target.bfloat16())
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        sta_loss(torch.zeros(1, 3, 3, 8, 8), torch.zeros(1, 2, 8, 8))
