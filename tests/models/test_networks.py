"""Networks of SPEC §3: shapes, ST stacking, SA audio path, weights loading, parameter groups."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from sta_models.config import TrainConfig
from sta_models.networks import RANDOM_INIT, WeightsError, build_branch, param_groups
from sta_models.networks.audio import AudioNet
from sta_models.networks.backbones import Backbone
from sta_models.trainer import build_optimizer


def _inputs(kind: str, size: int, b: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(size)
    if kind == "s":
        return (torch.randn(b, 3, size, size, generator=g),)
    if kind == "sa":
        return torch.randn(b, 3, size, size, generator=g), torch.randn(b, 1, 81, 199, generator=g)
    return (torch.randn(b, 3, 3, size, size, generator=g),)


def _grid(size: int, stride: int) -> int:
    for _ in range(int(math.log2(stride))):  # every ResNet down-sampling is ceil(n / 2)
        size = math.ceil(size / 2)
    return size


@pytest.mark.parametrize("kind", ["s", "sa", "st"])
def test_branch_shapes_at_two_sizes_same_model(kind: str) -> None:
    torch.manual_seed(0)
    model = build_branch(kind, "resnet18", num_classes=5, use_cache=False).eval()
    stride = 16 if kind == "s" else 32
    with torch.no_grad():
        for size in (64, 96):
            out = model(*_inputs(kind, size))
            n = 2 if kind != "st" else 6
            assert len(out.logits) == n and len(out.maps) == n
            h = _grid(size, stride)
            assert all(tuple(m.shape) == (2, 5, h, h) for m in out.maps)
            assert all(tuple(logit.shape) == (2, 5) for logit in out.logits)
            assert torch.allclose(out.logits[0], out.maps[0].mean((2, 3)))  # logits = GAP of maps
            assert tuple(out.cam().shape) == (2, 5, h, h) and out.cam().min() >= 0


def test_s_branch_runs_at_coarse_and_fine_sizes() -> None:
    model = build_branch("s", "resnet18", num_classes=4, use_cache=False).eval()
    assert model.backbone.out_channels == 256  # resnet18 layer3, derived from the network
    with torch.no_grad():
        for size, grid in ((256, 16), (356, 23)):
            out = model(torch.randn(1, 3, size, size))
            assert tuple(out.maps[1].shape) == (1, 4, grid, grid)


def test_backbone_channels_are_derived() -> None:
    assert Backbone("resnet18", "layer4", use_cache=False).channels == {
        "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    assert Backbone("resnet50", "layer3", use_cache=False).channels["layer3"] == 1024


def _amplify_new_layers(model: torch.nn.Module, std: float = 0.05) -> None:
    """The N(0, 0.01) init makes new-layer signals ~1e-6; larger weights make wiring visible."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith(("backbone.", "audio.")) and p.dim() > 1:
                p.normal_(0, 0.3 if name.startswith("temporal.") else std)


def _flip_time(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose temporal convolution is mirrored in time (kernel reversed along t)."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.temporal.t.weight.copy_(twin.temporal.t.weight.flip(2))
    return twin


def test_st_swap_prev_next_follows_stacking() -> None:
    """Reversing time in the input and in the (3,1,1) kernel must mirror the per-frame outputs.

    That holds only if dim 2 of the stack really is time: the old ``.view(B, C, 3, h, w)`` of a
    channel concatenation mixes channels into the time axis and breaks the symmetry.
    """
    torch.manual_seed(0)
    model = build_branch("st", "resnet18", num_classes=4, use_cache=False).eval()
    _amplify_new_layers(model)
    frames = _inputs("st", 64)[0]
    swapped = frames[:, [2, 1, 0]]
    mirror = _flip_time(model)
    masks: list[torch.Tensor] = []
    for m in (model, mirror):
        m.temporal.register_forward_hook(lambda _m, _i, o: masks.append(o))
    with torch.no_grad():
        out = model(frames)
        out_swapped = model(swapped)
        out_mirror = mirror(swapped)
    mask, mask_swapped, mask_mirror = masks
    assert mask.shape == (2, 1, 3, 2, 2)
    # plain swap: the centre frame's temporal mask changes (the kernel is not symmetric in time)
    assert (mask[:, :, 1] - mask_swapped[:, :, 1]).abs().max() > 1e-2
    assert (out.logits[4] - out_swapped.logits[4]).abs().max() > 0
    # swap + mirrored kernel: the mask is the original's, reversed in time
    assert torch.allclose(mask_mirror, mask.flip(2), atol=1e-6)
    # per-frame visual maps follow their frames
    assert torch.allclose(out.maps[0], out_swapped.maps[2], atol=1e-5)
    # swap + mirrored kernel: every refined output is the mirror image of the original's
    for k in range(3):
        assert torch.allclose(out.maps[3 + k], out_mirror.maps[3 + (2 - k)], atol=1e-5)
    assert torch.allclose(out.prediction(), out_mirror.prediction(), atol=1e-5)
    # prediction and CAM are the centre frame's
    assert torch.allclose(out.prediction(), (out.logits[1] + out.logits[4]) / 2)


def test_sa_audio_changes_output() -> None:
    torch.manual_seed(0)
    model = build_branch("sa", "resnet18", num_classes=4, use_cache=False).eval()
    image, audio = _inputs("sa", 64)
    # at the SPEC init (N(0, 0.01)) the effect is tiny in value: test the dependency itself
    audio_g = audio.clone().requires_grad_(True)
    out = model(image, audio_g)
    (grad2,) = torch.autograd.grad(out.logits[1].sum(), audio_g, retain_graph=True)
    assert grad2.abs().sum() > 0  # x2 depends on the spectrogram
    assert torch.autograd.grad(out.logits[0].sum(), audio_g, allow_unused=True)[0] is None  # x1 does not

    with torch.no_grad():  # a trained-like audio mask instead of the ~0.5-everywhere init
        for p in model.audio_mask.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    masks: list[torch.Tensor] = []
    model.audio_mask.register_forward_hook(lambda _m, _i, o: masks.append(o))
    other = torch.zeros_like(audio)
    other[:, :, 60:70, :] = 4.0  # a loud high-frequency band instead of noise
    with torch.no_grad():
        a = model(image, audio)
        b = model(image, other)
    assert masks[0].shape == (2, 1, 2, 2)
    assert (masks[0] - masks[1]).abs().max() > 1e-3  # different sounds, different masks
    assert torch.equal(a.logits[0], b.logits[0])
    assert not torch.equal(a.logits[1], b.logits[1])
    with torch.no_grad():  # and the mask really gates x2: forcing it to 0 vs 1 moves the logits
        model.audio_mask.to_mask.bias.fill_(-30.0)
        low = model(image, audio).logits[1]
        model.audio_mask.to_mask.bias.fill_(30.0)
        high = model(image, audio).logits[1]
    assert (low - high).abs().max() > 1e-4 * high.abs().max()  # float noise: ~1e-7


def test_pretrained_tensors_survive_construction(tmp_path: Path) -> None:
    torch.manual_seed(123)
    ref = tvm.resnet18(weights=None)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.5)  # values no init would produce
    state = ref.state_dict()
    torch.save(state, tmp_path / "r18.pth")
    audio_ref = AudioNet()
    audio_state = {f"module.audnet.{k}": v + 0.25 if v.is_floating_point() else v + 3
                   for k, v in audio_ref.state_dict().items()}
    audio_state["module.audnet.fc_.weight"] = torch.zeros(309, 8192)  # classifier head, ignored
    torch.save({"model_state_dict": audio_state}, tmp_path / "vggsound.pth.tar")

    for kind in ("s", "sa", "st"):
        model = build_branch(kind, "resnet18", backbone_weights=tmp_path / "r18.pth",
                             audio_weights=tmp_path / "vggsound.pth.tar")
        assert model.weights_record()["backbone"] == f"file:{tmp_path / 'r18.pth'}"
        own = model.backbone.state_dict()
        checked = 0
        for k, v in own.items():
            src = k.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.")
            assert torch.equal(v, state[src]), k
            checked += 1
        assert checked > 50
        if kind == "sa":
            for k, v in model.audio.state_dict().items():
                assert torch.equal(v, audio_state[f"module.audnet.{k}"]), k
            assert model.weights_record()["audio"].startswith("file:")


def test_random_init_is_recorded_and_cache_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert build_branch("s", "resnet18").weights_record() == {"backbone": RANDOM_INIT}
    (tmp_path / "checkpoints").mkdir()
    cached = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    torch.save(tvm.resnet18(weights=None).state_dict(), cached)
    assert build_branch("s", "resnet18").weights_record()["backbone"] == f"torchvision cache:{cached}"
    sa = build_branch("sa", "resnet18")
    assert sa.weights_record()["audio"] == RANDOM_INIT


def test_bad_weights_files_fail_clearly(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02not a checkpoint at all")
    with pytest.raises(WeightsError, match=str(corrupt)):
        build_branch("s", "resnet18", backbone_weights=corrupt)
    wrong = tmp_path / "resnet50.pth"
    torch.save(tvm.resnet50(weights=None).state_dict(), wrong)
    with pytest.raises(WeightsError, match=r"resnet50\.pth does not fit the network: .*shape mismatches"):
        build_branch("s", "resnet18", backbone_weights=wrong)
    with pytest.raises(WeightsError, match="does not exist"):
        build_branch("s", "resnet18", backbone_weights=tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"audio weights file .*resnet50\.pth"):
        build_branch("sa", "resnet18", use_cache=False, audio_weights=wrong)


def test_param_groups_and_multipliers() -> None:
    model = build_branch("sa", "resnet18", use_cache=False)
    groups = param_groups(model)
    assert [g["name"] for g in groups] == ["backbone_weight", "backbone_bias", "new_weight", "new_bias"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    backbone_ids = {id(p) for m in (model.backbone, model.audio) for p in m.parameters()}
    assert {id(p) for g in groups[:2] for p in g["params"]} == backbone_ids
    assert id(model.head[0].weight) in {id(p) for p in groups[2]["params"]}
    assert id(model.gru.wz.bias) in {id(p) for p in groups[3]["params"]}
    cfg = TrainConfig(backbone="resnet18", lr=1e-3)
    opt, _ = build_optimizer(groups, cfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 2e-3, 1e-2, 2e-2])
    assert all(g["nesterov"] and g["momentum"] == 0.9 and g["weight_decay"] == 5e-4 for g in opt.param_groups)


def test_new_layers_initialised_as_spec() -> None:
    torch.manual_seed(0)
    model = build_branch("st", "resnet18", use_cache=False)
    w = model.head[0].weight.detach()
    assert abs(float(w.std()) - 0.01) < 0.001
    assert not model.head[0].bias.detach().any() and not model.temporal.t.bias.detach().any()
