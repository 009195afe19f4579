"""The from-scratch recipe: how a branch is trained when its networks start from random init.

Why: SPEC §3's N(0, 0.01) new layers and ×10/×20 learning-rate multipliers assume an ImageNet /
VGGSound backbone that already produces features. Measured on a random-init ResNet-18 (see
docs/method-notes.md, "Training from scratch"): the initial logits are not large — they are ~1e-3,
the initial loss is exactly ln 28 per cross-entropy (28 output classes, whatever the dataset uses)
— but every N(0, 0.01) layer shrinks the signal (SA/ST head: std 1.0 → 2.4e-3 over four layers),
so the audio and temporal masks get gradients of ~1e-11 and the head's early layers learn ~100×
slower than its last one; the branch spends its epochs fitting the class prior through the biases.

The recipe (chosen by measurement, same epochs and batch size): He (Kaiming, fan-in, ReLU gain)
initialisation of the new layers so the signal keeps its scale, the layers that produce logits
kept small so the start is a near-uniform guess, a linear learning-rate warm-up over the first
epoch, and gradient-norm clipping. And for every random-init network (S as :data:`BN_RECIPE`,
STA as :data:`STA_RECIPE`): BatchNorm statistics recomputed before each validation — the running
averages lag a fast-moving random-init network, so eval mode predicted one class for every input
(``sta_models.batchnorm``). STA also clips its gradient norm at 5: from random init, on a
pseudo-GT from better-trained branches, its loss ran to NaN at epoch 6 (measured, method-notes
"Gradient clipping for STA"). Pretrained runs never use any of them (SPEC §3 exactly).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from torch import nn

from sta_models.branches import BRANCHES
from sta_models.networks.backbones import RANDOM_INIT

LINEAR_KINDS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


@dataclass(frozen=True)
class ScratchRecipe:
    """What changes against SPEC §3 for a network trained from random init (recorded as is)."""

    name: str = "scratch-v2"
    init: str = "He (Kaiming fan-in, ReLU gain) init of the new layers; logit layers N(0, 0.01)"
    he_init: bool = True  # False: SPEC §3's N(0, 0.01) new layers
    classifier_std: float = 0.01
    warmup_epochs: float = 1.0
    clip_norm: float | None = 5.0
    lr_scale: float = 3.0  # every group's lr ×3 (SPEC's lr assumes features that already exist)
    # "precise": before each validation, BatchNorm's running statistics are recomputed from at most
    # bn_batches training batches of the current weights (sta_models.batchnorm); "running": SPEC's.
    bn_statistics: Literal["precise", "running"] = "precise"
    bn_batches: int = 100

    def record(self) -> dict[str, Any]:
        return asdict(self)


#: The full recipe: SA and ST (their registry entries say ``scratch_recipe``).
RECIPE = ScratchRecipe()
#: Every other branch from random init (S): SPEC §3's init and steps, BatchNorm statistics
#: recomputed before validation (S learns under SPEC init; the larger steps made it worse).
BN_RECIPE = ScratchRecipe(name="scratch-bn-v1", init="SPEC §3 (N(0, 0.01) new layers)", he_init=False,
                          warmup_epochs=0.0, clip_norm=None, lr_scale=1.0)
#: STA from random init: :data:`BN_RECIPE` plus gradient-norm clipping at 5, which kept its loss
#: finite and monotone where SPEC's unclipped steps diverged (and cost nothing where they did not).
STA_RECIPE = replace(BN_RECIPE, name="scratch-sta-v1", clip_norm=5.0)


def applies_to(branch: str) -> bool:
    """Whether ``branch`` gets the full recipe from random init: its registry entry's ``scratch_recipe``
    (SA, ST; S is left at SPEC init and steps, see its entry in ``sta_models.branches``)."""
    spec = BRANCHES.get(branch)
    return spec is not None and spec.scratch_recipe


def recipe_for(branch: str | None, weights: Mapping[str, str], setting: str = "auto") -> ScratchRecipe | None:
    """The recipe a network trains with: None (SPEC §3 exactly) when it is pretrained or
    ``setting`` is ``"off"``; :data:`RECIPE` for a branch whose entry asks for it; :data:`BN_RECIPE`
    for any other random-init branch; :data:`STA_RECIPE` for STA (``branch`` None)."""
    if setting == "off" or not random_sources(weights):
        return None
    if branch is None:
        return STA_RECIPE
    return RECIPE if applies_to(branch) else BN_RECIPE


def random_sources(weights: Mapping[str, str]) -> list[str]:
    """Which pretrained-role networks (``backbone``, ``audio``) start from random init."""
    return sorted(k for k, v in weights.items() if v == RANDOM_INIT)


def scratch_init(modules: Iterable[nn.Module], logit_layers: Iterable[nn.Module], classifier_std: float) -> None:
    """He-initialise every conv/linear of ``modules``; ``logit_layers`` get N(0, classifier_std)."""
    small = {id(m) for m in logit_layers}
    for module in modules:
        for m in module.modules():
            if not isinstance(m, LINEAR_KINDS):
                continue
            if id(m) in small:
                nn.init.normal_(m.weight, 0.0, classifier_std)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def warmup_factor(step: int, steps_per_epoch: int, warmup_epochs: float) -> float:
    """Linear warm-up: ``(step + 1) / warm-up steps`` until it reaches 1 (step is 0-based, global)."""
    total = warmup_epochs * steps_per_epoch
    if total <= 0:
        return 1.0
    return min(1.0, (step + 1) / total)
