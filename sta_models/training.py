"""Training one classifier branch (any of ``sta_models.branches``) for one stage: SPEC §3 on top of ``trainer.fit``.

:class:`BranchTask` is the branch's :class:`~sta_models.trainer.TrainTask`; :func:`train_branch`
runs it and writes ``record.json`` next to ``last.pt``/``best.pt`` (weights used or random init,
excluded samples, final metrics) so a stage's output says what it was trained from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from sta_models.callbacks import NO_CALLBACKS, Callbacks
from sta_models.config import TrainConfig
from sta_models.datasets import FeatureDataset, prepare_batch
from sta_models.networks.branches import (
    NUM_CLASSES,
    BranchNet,
    branch_loss,
    build_branch,
    param_groups,
    run_branch,
)
from sta_models.scratch import ScratchRecipe, recipe_for, scratch_init
from sta_models.trainer import SplitDatasetTask, TrainResult, fit_and_record
from sta_models.training_health import branch_warnings


def model_meta(branch: str, cfg: TrainConfig, num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    """What a checkpoint needs to rebuild the network (``cams.load_branch`` reads it)."""
    return {"task": "branch", "branch": branch, "backbone": cfg.backbone, "num_classes": num_classes,
            "input_size": cfg.input_size}


class BranchTask(SplitDatasetTask):
    """The ``TrainTask`` of one branch: model, four param groups, datasets, SPEC §3 losses.

    Validation: CE loss as in training, top-1 accuracy of the frame prediction
    (``BranchOutput.prediction``, the centre frame for ST); ``score`` = top-1 accuracy; and
    ``cam_peak``, the mean max/mean of the true-class CAM (1 = flat; the health check reads it).
    From random init a branch gets a from-scratch recipe (``sta_models.scratch.recipe_for``)
    unless ``cfg.scratch_recipe == "off"``: the full one where its registry entry says
    ``scratch_recipe`` (SA, ST), else BatchNorm statistics only (S); ``recipe`` says which
    (None = SPEC §3 exactly: pretrained or off).
    """

    def __init__(self, branch: str, splits: Mapping[str, Sequence[Any]], feature_dir: str | Path,
                 cfg: TrainConfig, *, num_classes: int = NUM_CLASSES, use_cache: bool = True) -> None:
        self.branch, self.cfg, self.num_classes, self.use_cache = branch, cfg, num_classes, use_cache
        self.train_ds = FeatureDataset(splits["train"], feature_dir, branch, cfg.input_size, train=True)
        val_rows = splits.get("val") or []
        self.val_ds = FeatureDataset(val_rows, feature_dir, branch, cfg.input_size, train=False)
        self.weights: dict[str, str] = {}
        self.recipe: ScratchRecipe | None = None

    def build_model(self) -> nn.Module:
        model = build_branch(self.branch, self.cfg.backbone, num_classes=self.num_classes,
                             backbone_weights=self.cfg.backbone_weights,
                             audio_weights=self.cfg.audio_weights, use_cache=self.use_cache)
        self.weights = model.weights_record()
        self.recipe = recipe_for(self.branch, self.weights, self.cfg.scratch_recipe)
        if self.recipe is not None and self.recipe.he_init:
            scratch_init(model.new_modules(), model.logit_layers(), self.recipe.classifier_std)
        return model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        groups = param_groups(model)  # type: ignore[arg-type]  # TrainTask takes any nn.Module; fit passes the BranchNet build_model made
        if self.recipe is not None:
            for g in groups:
                g["lr_mult"] *= self.recipe.lr_scale
        return groups

    def loss(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, int]:
        batch = prepare_batch(batch, device)
        out = run_branch(model, batch)  # type: ignore[arg-type]  # TrainTask takes any nn.Module; fit passes the BranchNet build_model made
        return branch_loss(out, batch["label"], self.branch), int(batch["label"].shape[0])

    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        loss_sum, correct, n, peak = 0.0, 0, 0, 0.0
        for raw in loader:
            batch = prepare_batch(raw, device)
            out = run_branch(model, batch)  # type: ignore[arg-type]  # TrainTask takes any nn.Module; fit passes the BranchNet build_model made
            b = int(batch["label"].shape[0])
            loss_sum += float(branch_loss(out, batch["label"], self.branch)) * b
            correct += int((out.prediction().argmax(1) == batch["label"]).sum())
            peak += float(cam_peak(out.cam(), batch["label"]).sum())
            n += b
        acc = correct / max(n, 1)
        return {"val_loss": loss_sum / max(n, 1), "val_accuracy": acc, "score": acc,
                "cam_peak": peak / max(n, 1)}

    def warnings(self, history: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
        """Health checks of the finished stage (``training_health.branch_warnings``)."""
        classes = {r.category_id for r in self.train_ds.rows}
        return branch_warnings(history, len(classes), self.branch.upper())

    def meta(self) -> dict[str, Any]:
        return model_meta(self.branch, self.cfg, self.num_classes)


def cam_peak(cam: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample max/mean of the true-class CAM channel; 0 for an all-zero map (flat)."""
    maps = cam.float()[torch.arange(cam.shape[0], device=cam.device), labels].flatten(1)
    mean = maps.mean(1)
    return torch.where(mean > 0, maps.amax(1) / mean.clamp_min(1e-12), torch.zeros_like(mean))


def train_branch(branch: str, splits: Mapping[str, Sequence[Any]], feature_dir: str | Path,
                 out_dir: str | Path, cfg: TrainConfig, callbacks: Callbacks = NO_CALLBACKS,
                 resume: bool = True, *, use_cache: bool = True) -> TrainResult:
    """Train a registered branch (S, SA, ST: SPEC §3); writes last.pt, best.pt and record.json in ``out_dir``."""
    task = BranchTask(branch, splits, feature_dir, cfg, use_cache=use_cache)
    return fit_and_record(task, cfg, out_dir, callbacks, resume, name=branch, best_key="best_val_accuracy",
                          selection="val top-1 accuracy", extra={"branch": branch})


def load_branch(checkpoint: str | Path | Mapping[str, Any], device: torch.device | str = "cpu") -> BranchNet:
    """Rebuild a branch from a ``best.pt``/``last.pt`` (random-init trunk, then the saved tensors)."""
    from sta_models.trainer import load_checkpoint

    ckpt = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)
    meta = ckpt["meta"]
    if meta.get("task") != "branch":
        raise ValueError(f"checkpoint holds a {meta.get('task')!r} model, not a classifier branch")
    model = build_branch(meta["branch"], meta["backbone"], num_classes=meta["num_classes"], use_cache=False)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()
