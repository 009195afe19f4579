"""Typed per-pipeline configuration and the presets ``tiny``, ``demo`` and ``paper``.

A :class:`PipelineConfig` is stored as JSON with each pipeline, so a run can always be reproduced
from its record. Defaults are the method's (SPEC §2–§7); the presets only shrink sizes and epochs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from sta_models.branches import BRANCHES as BRANCH_SPECS

Backbone = Literal["resnext101_32x8d", "resnet50", "resnet18"]
# The one list of backbone names: the config type, the CLI choices and the form's select read it.
BACKBONES: tuple[Backbone, ...] = get_args(Backbone)
BRANCHES: tuple[str, ...] = tuple(BRANCH_SPECS)  # the registered branches (sta_models.branches), in order
if TYPE_CHECKING:
    Branch = str
else:  # the registry's names as a Literal, so pydantic names the choices for an unknown key
    Branch = Literal[BRANCHES]


SEED_MAX = 2**32 - 1  # numpy's and torch's seeds
STR_MAX = 1000  # the longest text setting (weight file paths)
EPOCHS_MAX = 1000


class _Strict(BaseModel):
    """Unknown keys, NaN/±Infinity, ``true`` for a number, NUL and over-long text are all rejected:
    each would be accepted here and fail (or hang) a stage hours later."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False,
                              str_max_length=STR_MAX)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers_or_nul(cls, v: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(v, bool) and field is not None and field.annotation in (int, float):
            raise ValueError("must be a number, not true/false")
        if isinstance(v, str) and "\x00" in v:
            raise ValueError("must not contain NUL characters")
        return v


class ExtractConfig(_Strict):
    """Per-video extraction (SPEC §2)."""

    size: int = Field(356, ge=32, le=1024, description="stored frame size (square, aspect not kept)")
    min_success_fraction: float = Field(
        0.9, ge=0.0, le=1.0, description="the pipeline goes on if at least this fraction of videos extracted"
    )


class TrainConfig(_Strict):
    """One training stage (a classifier branch or STA)."""

    backbone: Backbone = "resnext101_32x8d"
    input_size: int = Field(256, ge=32, le=1024)
    epochs: int = Field(30, ge=1, le=EPOCHS_MAX)
    batch_size: int = Field(64, ge=1, le=4096)
    lr: float = Field(1e-4, gt=0.0, le=10.0)
    decay_epochs: list[int] = Field(default_factory=lambda: [5, 10], max_length=100)
    lr_decay: float = Field(0.1, gt=0.0, le=1.0)
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    workers: int = Field(4, ge=0, le=64, description="DataLoader worker processes")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    seed: int = Field(0, ge=0, le=SEED_MAX)
    backbone_weights: str | None = Field(
        None, description="torchvision state-dict file; unset = torchvision cache if present, else random init"
    )
    audio_weights: str | None = Field(None, description="VGGSound audio checkpoint file; unset = random init")
    scratch_recipe: Literal["auto", "off"] = Field(
        "auto", description="'auto': the from-scratch recipe whenever a network starts from random init "
        "(docs/method-notes.md); 'off': SPEC §3 exactly even then")
    deterministic: bool = Field(False, description="deterministic cuDNN and algorithms (exact resume on GPUs)")
    on_resume_change: Literal["refuse", "apply"] = Field(
        "refuse", description="a resume whose training settings differ from the checkpoint's: refuse "
        "(naming the fields) or apply the new values from the next epoch on (recorded)")
    keep_checkpoints: Literal["needed", "all"] = Field(
        "needed", description="after success keep only best.pt ('needed') or also last.pt ('all')")

    @field_validator("decay_epochs")
    @classmethod
    def _sorted_positive(cls, v: list[int]) -> list[int]:
        if any(e < 1 or e > EPOCHS_MAX for e in v):
            raise ValueError(f"decay epochs must be between 1 and {EPOCHS_MAX}")
        return sorted(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isascii() and v[5:].isdigit()
                                             and int(v[5:]) < 1024):
            return v
        raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N < 1024)")


class PseudoGTConfig(_Strict):
    """Coarse-to-fine fusion constants (SPEC §5). Sizes are in pixels of the stored frame."""

    alpha_start: float = Field(2.0, gt=0.0, le=100.0)
    alpha_step: float = Field(0.05, ge=1e-3, le=100.0, description="≥ 0.001: α_start/α_step thresholds are tried")
    min_box: int = Field(100, ge=1, le=1024, description="minimum box height and width")
    fusion_eps: float = Field(
        1e-4, gt=0.0, le=1.0, description="ε of the SPEC fusion formula; it cancels in the final min-max, so F does not depend on it")
    smooth_window: int = Field(3, ge=1, le=99, description="temporal smoothing window in seconds (odd)")
    sparsify_factor: float = Field(3.0, ge=0.0, le=1000.0, description="zero every pixel below factor*mean")
    fusion_weighting: Literal["auto", "probability", "contrast"] = Field(
        "auto", description="branch weights of the CAM fusion: 'probability' = SPEC §5; 'contrast' = probability "
        "× the CAM's max/mean − 1; 'auto' = contrast when the phase's branches trained from random init")

    @field_validator("smooth_window")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("smooth_window must be odd (a centred window)")
        return v


class EvaluateConfig(_Strict):
    """Evaluation and inference (SPEC §6, §7)."""

    blur_sigma: float = Field(2.0, ge=0.0, le=100.0)
    n_splits: int = Field(100, ge=1, le=10_000)
    step: float = Field(0.1, ge=1e-3, le=1.0)
    overlay_videos: int = Field(3, ge=0, le=1000, description="test videos rendered as overlay MP4s")
    seed: int = Field(0, ge=0, le=SEED_MAX)


class PipelineConfig(_Strict):
    """Everything one pipeline run needs; stored with the pipeline."""

    preset: str = Field("paper", max_length=20)
    split_seed: int = Field(0, ge=0, le=SEED_MAX)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    coarse: dict[Branch, TrainConfig]
    fine: dict[Branch, TrainConfig]
    pseudo_gt: PseudoGTConfig = Field(default_factory=PseudoGTConfig)
    sta: TrainConfig
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @model_validator(mode="after")
    def _all_branches(self) -> PipelineConfig:
        for stage_name in ("coarse", "fine"):
            missing = set(BRANCHES) - set(getattr(self, stage_name))
            if missing:
                raise ValueError(f"{stage_name} is missing branch settings: {sorted(missing)}")
        if self.pseudo_gt.min_box > self.extract.size:
            raise ValueError("pseudo_gt.min_box cannot exceed extract.size")
        return self


def _paper() -> PipelineConfig:
    batch = {b: spec.paper_batch_size for b, spec in BRANCH_SPECS.items()}
    coarse = {b: TrainConfig(input_size=256, batch_size=batch[b]) for b in BRANCHES}
    fine = {b: TrainConfig(input_size=356, batch_size=batch[b]) for b in BRANCHES}
    sta = TrainConfig(input_size=356, epochs=15, batch_size=8, weight_decay=1e-4)
    return PipelineConfig(preset="paper", coarse=coarse, fine=fine, sta=sta)


def _small(
    name: str, size: int, coarse_in: int, fine_in: int, epochs: int, sta_epochs: int, min_box: int,
    branch_batch: int = 16, branch_epochs: Mapping[str, int] | None = None,
) -> PipelineConfig:
    """A CPU-sized preset; ``branch_epochs`` overrides ``epochs`` for the branches it names."""
    per_branch = {b: (branch_epochs or {}).get(b, epochs) for b in BRANCHES}

    def cfg(inp: int, ep: int, bs: int, lr: float, wd: float = 5e-4) -> TrainConfig:
        return TrainConfig(
            backbone="resnet18", input_size=inp, epochs=ep, batch_size=bs, lr=lr,
            decay_epochs=[max(ep, 1) + 1], weight_decay=wd, workers=0, device="auto",
        )

    return PipelineConfig(
        preset=name,
        extract=ExtractConfig(size=size),
        # Random-init ResNet-18s: 1e-2 diverges on the synthetic data, 1e-3 learns (bench/RESULTS.md).
        coarse={b: cfg(coarse_in, per_branch[b], branch_batch, 1e-3) for b in BRANCHES},
        fine={b: cfg(fine_in, per_branch[b], branch_batch, 1e-3) for b in BRANCHES},
        pseudo_gt=PseudoGTConfig(min_box=min_box),
        sta=cfg(fine_in, sta_epochs, 8, 1e-3, wd=1e-4),
        evaluate=EvaluateConfig(n_splits=20, overlay_videos=1),
    )


# The one list of presets (name -> builder): CLI choices, the form, the API and the OpenAPI enum read it.
_PRESET_BUILDERS: dict[str, Callable[[], PipelineConfig]] = {
    # tiny: batch 4 — its ~21 training samples gave batch 16 two SGD steps an epoch, too few to
    # leave the class prior from random init (docs/method-notes.md, "BatchNorm statistics")
    "tiny": lambda: _small("tiny", size=112, coarse_in=96, fine_in=96, epochs=6, sta_epochs=6, min_box=32,
                           branch_batch=4),
    # demo: a branch may ask for more epochs than 6 (BranchSpec.demo_epochs: ST's 8)
    "demo": lambda: _small("demo", size=160, coarse_in=96, fine_in=112, epochs=6, sta_epochs=8, min_box=45,
                           branch_epochs={b: s.demo_epochs for b, s in BRANCH_SPECS.items() if s.demo_epochs}),
    "paper": _paper,
}
PRESETS: tuple[str, ...] = tuple(_PRESET_BUILDERS)
DEFAULT_PRESET = "tiny"  # what the form, the API and ``stapipe submit/run`` start from (CI-sized)


def preset(name: str) -> PipelineConfig:
    """A fresh config for a named preset (``tiny``: CI on CPU; ``demo``: minutes on 2 cores; ``paper``)."""
    builder = _PRESET_BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return builder()
