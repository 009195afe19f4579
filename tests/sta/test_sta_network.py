"""STA network (SPEC §6): shapes at several input sizes, temporal stacking order, audio wiring."""

from __future__ import annotations

import pytest
import torch

from sta_models.networks.sta import STA, build_sta, sta_param_groups


def _inputs(b: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 3, size, size, generator=g), torch.randn(b, 3, 1, 81, 199, generator=g)


@pytest.mark.parametrize("size", [64, 80])
def test_nine_logit_maps_at_input_size(sta_model: STA, size: int) -> None:
    frames, audio = _inputs(2, size)
    with torch.no_grad():
        out = sta_model(frames, audio)
    assert out.shape == (2, 3, 3, size, size)  # [B, frames, side outputs, H, W]
    sal = sta_model.saliency(frames, audio)
    assert sal.shape == (2, size, size)
    assert float(sal.min()) >= 0.0 and float(sal.max()) <= 1.0
    assert torch.allclose(sal, torch.sigmoid(out[:, 1, 2]))


def test_channels_follow_the_backbone() -> None:
    model = STA("resnet18", channels=5, use_cache=False)
    assert model.new["proj3"].in_channels == 128
    assert model.new["proj4"].in_channels == 256
    assert model.new["proj5"].in_channels == 512
    assert model.new["side2"].in_channels == 5
    assert model.describe() == {"model": "sta", "backbone": "resnet18", "channels": 5}
    assert build_sta(model.describe()).state_dict().keys() == model.state_dict().keys()


def test_temporal_stack_is_channel_by_time(sta_model: STA) -> None:
    """The Conv3d sees [B, C, 3, h, w] with [:, :, k] = frame k's projected map (no .view scramble)."""
    seen: dict[str, torch.Tensor] = {}
    h1 = sta_model.new["proj5"].register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    h2 = sta_model.new["temporal"].register_forward_pre_hook(lambda m, i: seen.__setitem__("stack", i[0]))
    try:
        frames, audio = _inputs(2, 64)
        with torch.no_grad():
            sta_model(frames, audio)
    finally:
        h1.remove()
        h2.remove()
    x, stack = seen["x"], seen["stack"]
    assert stack.shape == (2, 8, 3, *x.shape[-2:])
    for b in range(2):
        for k in range(3):
            assert torch.equal(stack[b, :, k], x[3 * b + k])


def test_swapping_prev_and_next(sta_model: STA) -> None:
    """Time-symmetric temporal kernel: swapping t−1/t+1 swaps their outputs, centre unchanged.
    Asymmetric kernel: the centre output depends on which neighbour is which."""
    frames, audio = _inputs(1, 64, seed=3)
    swapped_f, swapped_a = frames[:, [2, 1, 0]], audio[:, [2, 1, 0]]
    conv = sta_model.new["temporal"]
    original = conv.weight.detach().clone()
    try:
        with torch.no_grad():
            conv.weight.copy_((original + original.flip(2)) / 2)
            a, b = sta_model(frames, audio), sta_model(swapped_f, swapped_a)
        assert torch.allclose(a[:, 1], b[:, 1], atol=1e-5)
        assert torch.allclose(a[:, 0], b[:, 2], atol=1e-5) and torch.allclose(a[:, 2], b[:, 0], atol=1e-5)
        with torch.no_grad():
            w = torch.zeros_like(original)
            w[:, :, 0] = original[:, :, 0]  # only the previous frame drives the mask
            conv.weight.copy_(w)
            a, b = sta_model(frames, audio), sta_model(swapped_f, swapped_a)
        assert (a[:, 1] - b[:, 1]).abs().max() > 1e-3
    finally:
        with torch.no_grad():
            conv.weight.copy_(original)


def test_audio_changes_only_its_own_frame(sta_model: STA) -> None:
    frames, audio = _inputs(1, 64, seed=5)
    other = audio.clone()
    other[:, 2] = torch.randn(1, 1, 81, 199, generator=torch.Generator().manual_seed(9))
    fc = sta_model.new["audio_mask"].fc
    original = fc.weight.detach().clone()
    try:  # a random audio net maps every input to nearly the same embedding: amplify the difference
        with torch.no_grad():
            fc.weight.mul_(1000.0)
            a, a2, b = sta_model(frames, audio), sta_model(frames, audio), sta_model(frames, other)
    finally:
        with torch.no_grad():
            fc.weight.copy_(original)
    assert torch.equal(a, a2)
    assert (a[:, 2] - b[:, 2]).abs().max() > 1e-4  # frame t+1's audio changes frame t+1's maps …
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-6)  # … and nothing else


def test_param_groups_cover_everything_once() -> None:
    model = STA("resnet18", channels=4, use_cache=False)
    groups = sta_param_groups(model)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    mults = {g["name"]: g["lr_mult"] for g in groups}
    assert mults == {"backbone_weight": 1.0, "backbone_bias": 2.0, "new_weight": 10.0, "new_bias": 20.0}
    new_ids = {id(p) for p in model.new.parameters()}
    for g in groups:
        assert all((id(p) in new_ids) == g["name"].startswith("new") for p in g["params"])
