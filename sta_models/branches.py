"""The classifier branches of SPEC §3, each declared once, like torchvision's model builders.

Why one registry: a branch's name, network, batch inputs, loss, event-length minimum and recipe
were spelled out in a dozen files; now datasets, CAMs, training, the from-scratch recipe, the
ablation, the CLI's choices, the pipeline's stage kinds (``train_<name>_coarse`` …), the disk
estimate and the dashboard's config form iterate over :data:`BRANCHES`. Adding a branch = one
:func:`register_branch` call below (+ its network class; docs/architecture.md, "How to add a
branch").

Torch-free: the dashboard and the worker's stage graph import it. The network class and the loss
are named by import path (``"module:attr"``) and imported only when a model is built, or given as
the objects themselves (tests, code outside this package).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

#: SPEC §3: a window t−1, t, t+1 needs an event of at least 3 s (ST; STA's samples use the same window).
TEMPORAL_MIN_EVENT_S = 3

#: Batch keys a dataset item can carry for a network: one frame and its second's audio, or the
#: window's frames and each frame's audio (``sta_models.datasets.FeatureDataset``).
SINGLE_FRAME_KEYS = ("image", "audio")
WINDOW_KEYS = ("frames", "audios")


@dataclass(frozen=True)
class BranchSpec:
    """One classifier branch: everything the pipeline needs to train it and read its CAMs.

    ``inputs`` are the batch keys its ``forward`` takes, in order (``image``/``audio`` for one
    frame, ``frames``/``audios`` for a window of ``window`` frames centred on the second, clamped
    to the event). ``params`` counts the built network's float32 parameters + buffers per backbone
    (the disk estimate's checkpoint size; torchvision's ``num_params``); ``stride`` is the class
    map's downsampling (its CAM grid = ceil(input / stride)).
    """

    name: str  # config key, stage kinds train_<name>_coarse/_fine, CAM folder names
    label: str  # how people see it: "SA"
    network: str | type  # "module:Class" of its BranchNet subclass (or the class)
    inputs: tuple[str, ...]
    window: int = 1  # frames per sample (odd)
    loss: str | Callable[..., Any] = "sta_models.networks.branches:pair_loss"  # (BranchOutput, target) → loss
    min_event_s: int = 1  # rows with a shorter event get no sample, no CAM
    scratch_recipe: bool = False  # the from-scratch recipe applies from random init (sta_models.scratch)
    paper_batch_size: int = 64  # the paper preset's batch size (coarse and fine)
    demo_epochs: int | None = None  # the demo preset's epochs for this branch (None: the preset's own)
    stride: int = 32
    params: Mapping[str, int] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        allowed = SINGLE_FRAME_KEYS if self.window == 1 else WINDOW_KEYS
        if not self.inputs or any(k not in allowed for k in self.inputs):
            raise ValueError(f"branch {self.name!r}: inputs {self.inputs} must be drawn from {allowed} "
                             f"for a window of {self.window} frame(s)")
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"branch {self.name!r}: window must be odd and positive (centred on its second)")
        if self.min_event_s < self.window:
            raise ValueError(f"branch {self.name!r}: min_event_s {self.min_event_s} is shorter than its window")

    @property
    def needs_audio(self) -> bool:
        """Whether the network reads audio (its dataset loads it; silent seconds are left out of training)."""
        return any(k in ("audio", "audios") for k in self.inputs)

    @property
    def image_key(self) -> str:
        """The batch key of its frames: ``image`` [B, 3, S, S] or ``frames`` [B, window, 3, S, S]."""
        return SINGLE_FRAME_KEYS[0] if self.window == 1 else WINDOW_KEYS[0]

    @property
    def audio_key(self) -> str:
        return SINGLE_FRAME_KEYS[1] if self.window == 1 else WINDOW_KEYS[1]

    def network_class(self) -> type:
        return _resolve(self.network)

    def loss_fn(self) -> Callable[..., Any]:
        return _resolve(self.loss)


def _resolve(ref: Any) -> Any:
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(import_module(module), attr)


#: name → spec, in pipeline order (the order of stage kinds, config sections and tables).
BRANCHES: dict[str, BranchSpec] = {}


def register_branch(spec: BranchSpec) -> BranchSpec:
    """Add ``spec`` to :data:`BRANCHES` (a name is registered once)."""
    if spec.name in BRANCHES:
        raise ValueError(f"branch {spec.name!r} is already registered")
    BRANCHES[spec.name] = spec
    return spec


def get_branch(name: str) -> BranchSpec:
    """The spec of ``name``; ``ValueError`` (one line, listing the choices) for an unknown one."""
    spec = BRANCHES.get(name)
    if spec is None:
        raise ValueError(f"unknown branch {name!r}; choose one of {', '.join(BRANCHES)}")
    return spec


def branch_names() -> tuple[str, ...]:
    return tuple(BRANCHES)


register_branch(BranchSpec(
    name="s", label="S", network="sta_models.networks.branches:SBranch", inputs=("image",),
    paper_batch_size=64, stride=16,
    params={"resnet18": 2_802_512, "resnet50": 8_610_668, "resnext101_32x8d": 58_195_359},
    # S keeps SPEC init from random init: it has a single N(0, 0.01) layer before its logits
    # (class-map std 0.2, it learns), and the recipe's larger steps made it worse on the tiny set
    # (best val top-1 0.42 against 0.67 with SPEC init; docs/method-notes.md).
    description="one frame, backbone to layer3",
))
register_branch(BranchSpec(
    name="sa", label="SA", network="sta_models.networks.branches:SABranch", inputs=("image", "audio"),
    scratch_recipe=True, paper_batch_size=40,
    params={"resnet18": 28_000_178, "resnet50": 74_112_531, "resnext101_32x8d": 137_496_646},
    description="one frame and its second's audio (audio mask)",
))
register_branch(BranchSpec(
    name="st", label="ST", network="sta_models.networks.branches:STBranch", inputs=("frames",), window=3,
    loss="sta_models.networks.branches:window_loss", min_event_s=TEMPORAL_MIN_EVENT_S,
    scratch_recipe=True, paper_batch_size=20,
    # demo: 8 epochs — at 6 its loss still fell steeply and 2 of 5 seeds ended at exactly 2×
    # chance; ST is the cheapest branch (~4 s an epoch on 2 cores; docs/method-notes.md,
    # "ST coarse on the demo set")
    demo_epochs=8,
    params={"resnet18": 12_105_162, "resnet50": 37_763_179, "resnext101_32x8d": 101_147_294},
    description="frames t−1, t, t+1 (temporal mask); CAM and prediction of the centre frame",
))
