"""Training the STA network on the pseudo-GT (SPEC §6) with the shared ``trainer.fit`` loop.

:class:`StaTask` is STA's :class:`~sta_models.trainer.TrainTask`; :func:`train_sta` runs it and
writes ``record.json`` next to ``last.pt``/``best.pt``, like the classifier branches.

Validation, every epoch, on the val rows' pseudo-GT (never the test split): the loss as in
training, and CC, NSS, SIM, KLD (``sta_models.metrics``, MIT definitions) of the centre frame's
saliency against its pseudo-GT at the training input size, averaged over samples (NaN samples —
constant maps — dropped). NSS needs fixations, which a pseudo-GT does not have: **the fixation map
is the pseudo-GT binarised at its own mean** (``G > mean(G)``). With the default sparsification
(pixels below 3·mean are zeroed) that is exactly the surviving salient region; it stays meaningful
for unsparsified maps and needs no extra constant. ``best.pt`` = best val CC.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from sta_models import metric_table
from sta_models.ave import AnnotationRow
from sta_models.callbacks import NO_CALLBACKS, Callbacks
from sta_models.config import TrainConfig
from sta_models.datasets import feature_path, prepare_batch
from sta_models.evaluation import score_metric
from sta_models.networks.sta import CENTRE, DEFAULT_CHANNELS, FINEST, STA, build_sta, sta_param_groups
from sta_models.scratch import ScratchRecipe, recipe_for
from sta_models.sta_data import StaDataset
from sta_models.sta_loss import sta_loss, sta_loss_per_item
from sta_models.trainer import SplitDatasetTask, TrainResult, fit_and_record, load_checkpoint

METRIC_KEYS = ("cc", "nss", "sim", "kld")  # validation metrics: entries of sta_models.metric_table
NSS_FIXATIONS = "pseudo-GT > its mean"


def fixation_map(target: np.ndarray) -> np.ndarray:
    """Binary 'fixations' of a pseudo-GT map for NSS: pixels above the map's mean."""
    return target > target.mean()


def saliency_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """CC, NSS, SIM, KLD of one predicted map against one pseudo-GT map (same size)."""
    fix = fixation_map(target)
    return {k: score_metric(metric_table.METRICS[k], pred, target, fix) for k in METRIC_KEYS}


def frame_size_of(rows: Sequence[AnnotationRow], feature_dir: str | Path) -> int | None:
    """The stored frame size of the first readable feature file (predict extracts at this size)."""
    for row in rows:
        path = feature_path(feature_dir, row)
        if path.exists():
            with h5py.File(path, "r") as f:
                return int(f["frames"].shape[1])
    return None


class StaTask(SplitDatasetTask):
    """The ``TrainTask`` of STA: model, SPEC §3 param groups, STA datasets, SPEC §6 loss; from random
    init, BatchNorm statistics are recomputed before each validation and the gradient norm is
    clipped at 5 (``scratch.STA_RECIPE``)."""

    def __init__(self, splits: Mapping[str, Sequence[AnnotationRow]], feature_dir: str | Path,
                 pseudo_gt_dir: str | Path, cfg: TrainConfig, *, channels: int = DEFAULT_CHANNELS,
                 use_cache: bool = True) -> None:
        self.cfg, self.channels, self.use_cache = cfg, channels, use_cache
        self.train_ds = StaDataset(splits["train"], feature_dir, pseudo_gt_dir, cfg.input_size, train=True)
        val_rows = splits.get("val") or []
        self.val_ds = StaDataset(val_rows, feature_dir, pseudo_gt_dir, cfg.input_size, train=False)
        self.frame_size = frame_size_of(list(splits["train"]) + list(val_rows), feature_dir)
        self.weights: dict[str, str] = {}
        self.recipe: ScratchRecipe | None = None

    def build_model(self) -> nn.Module:
        model = STA(self.cfg.backbone, self.channels, backbone_weights=self.cfg.backbone_weights,
                    audio_weights=self.cfg.audio_weights, use_cache=self.use_cache)
        self.weights = model.weight_sources
        self.recipe = recipe_for(None, self.weights, self.cfg.scratch_recipe)  # BatchNorm statistics, clipping
        return model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return sta_param_groups(model)  # type: ignore[arg-type]  # TrainTask takes any nn.Module; fit passes the STA build_model made

    def loss(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, int]:
        batch = prepare_batch(batch, device)
        logits = model(batch["frames"], batch["audios"])
        return sta_loss(logits, batch["target"]), int(batch["target"].shape[0])

    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        loss_sum, n = 0.0, 0
        scores: dict[str, list[float]] = {k: [] for k in METRIC_KEYS}
        for raw in loader:
            batch = prepare_batch(raw, device)
            logits = model(batch["frames"], batch["audios"])
            loss_sum += float(sta_loss_per_item(logits, batch["target"]).sum())
            n += int(batch["target"].shape[0])
            pred = torch.sigmoid(logits[:, CENTRE, FINEST].float()).cpu().numpy()
            target = batch["target"][:, CENTRE].float().cpu().numpy()
            for p, g in zip(pred, target, strict=True):
                for k, v in saliency_scores(p, g).items():
                    scores[k].append(v)
        out = {"val_loss": loss_sum / max(n, 1)}
        for k, values in scores.items():
            finite = [v for v in values if math.isfinite(v)]
            out[k] = float(np.mean(finite)) if finite else float("nan")
            out[f"{k}_nan_frames"] = float(len(values) - len(finite))
        out["score"] = out["cc"] if math.isfinite(out["cc"]) else -1.0  # CC's floor: NaN never wins
        return out

    def meta(self) -> dict[str, Any]:
        return sta_meta(self.cfg, self.channels, self.frame_size)


def sta_meta(cfg: TrainConfig, channels: int, frame_size: int | None) -> dict[str, Any]:
    """What a checkpoint needs to rebuild the network and feed it (``predict`` reads it)."""
    return {"task": "sta", "model": "sta", "backbone": cfg.backbone, "channels": channels,
            "input_size": cfg.input_size, "frame_size": frame_size}


def train_sta(splits: Mapping[str, Sequence[AnnotationRow]], feature_dir: str | Path,
              pseudo_gt_dir: str | Path, out_dir: str | Path, cfg: TrainConfig,
              callbacks: Callbacks = NO_CALLBACKS, resume: bool = True, *,
              channels: int = DEFAULT_CHANNELS, use_cache: bool = True) -> TrainResult:
    """Train STA (SPEC §6); writes last.pt, best.pt (best val CC) and record.json in ``out_dir``."""
    task = StaTask(splits, feature_dir, pseudo_gt_dir, cfg, channels=channels, use_cache=use_cache)
    extra = {"stage": "sta", "meta": task.meta(), "nss_fixations": NSS_FIXATIONS,
             "neighbour_rule": "a neighbour second without pseudo-GT is replaced by the centre second"}
    return fit_and_record(task, cfg, out_dir, callbacks, resume, name="sta", best_key="best_val_cc",
                          selection="val CC against the pseudo-GT", extra=extra)


def load_sta(checkpoint: str | Path | Mapping[str, Any],
             device: torch.device | str = "cpu") -> tuple[STA, dict[str, Any]]:
    """Rebuild STA from a ``best.pt``/``last.pt``: (model in eval mode on ``device``, its meta)."""
    ckpt = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)
    meta = dict(ckpt["meta"])
    if meta.get("task") != "sta":
        raise ValueError(f"checkpoint holds a {meta.get('task')!r} model, not STA")
    model = build_sta(meta)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), meta
