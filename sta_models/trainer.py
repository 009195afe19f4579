"""Generic, resumable training loop shared by the classifier branches and STA.

Why a separate module: every training stage of the method (S, SA, ST coarse/fine, STA) needs the
same machinery — SGD with parameter groups, step decay, bf16 on CUDA, an atomic checkpoint every
epoch, exact resume, cancellation, per-epoch metrics — and only differs in the model, the data and
the loss. A stage describes those differences as a :class:`TrainTask`; :func:`fit` does the rest.

Writing a task (duck typing; no base class needed)::

    class MyTask:
        def build_model(self) -> nn.Module: ...            # called after torch.manual_seed(cfg.seed)
        def param_groups(self, model) -> list[dict]: ...    # [{"params": [...], "lr_mult": 1.0}, ...]
        def train_dataset(self) -> Dataset: ...            # items: dicts of tensors (default collate)
        def val_dataset(self) -> Dataset | None: ...
        def loss(self, model, batch, device) -> tuple[Tensor, int]: ...       # (mean loss, n samples)
        def validate(self, model, loader, device) -> dict[str, float]: ...
            # must hold "val_loss" and "score" (higher is better; picks best.pt); may hold
            # "val_accuracy"; every other key goes to EpochMetrics.extra
        def meta(self) -> dict: ...  # JSON-able; stored in checkpoints so a model can be rebuilt

``fit`` handles ``model.train()/eval()``, ``torch.no_grad`` and autocast around ``validate``; the
task's ``loss`` must move the batch to ``device`` itself (use ``datasets.to_device``).

Randomness: the model is built after ``torch.manual_seed(cfg.seed)``; shuffling comes from
:class:`SeededSampler`, whose generator state is checkpointed. The sampler yields
``(index, aug_seed)`` pairs so that per-sample augmentation is a function of that generator too —
identical with 0 or N worker processes and across resume. Datasets must accept such pairs (see
``datasets.FeatureDataset.__getitem__``).

Checkpoints: ``out_dir/last.pt`` after every epoch (and an epoch-0 one before training, so a
cancel always leaves a consistent file), ``out_dir/best.pt`` (model + meta + metrics, best
``score`` on the validation split only; without a validation split, best = last). Both written to a
temporary name and ``os.replace``-d. ``resume=True`` restores model, optimiser, scheduler, sampler
generator and RNG states from ``last.pt`` and continues after its epoch; ``on_epoch`` is never
emitted again for epochs already done (their metrics are in ``TrainResult.history``).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from sta_models.callbacks import NO_CALLBACKS, Callbacks, Cancelled, EpochMetrics, epoch_line
from sta_models.config import TrainConfig
from sta_models.jsonio import write_json_atomic

CHECKPOINT_FORMAT = "stapipe-train-v1"


class TrainTask(Protocol):
    """What one training stage must provide (see the module docstring)."""

    def build_model(self) -> nn.Module: ...
    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]: ...
    def train_dataset(self) -> Dataset: ...
    def val_dataset(self) -> Dataset | None: ...
    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]: ...
    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]: ...
    def meta(self) -> dict[str, Any]: ...


class SplitDatasetTask:
    """Dataset plumbing shared by the concrete tasks: a train and a val dataset that each count
    the samples they left out (``exclusions()``); an empty val split means "no validation"."""

    train_ds: Any
    val_ds: Any

    def train_dataset(self) -> Any:
        return self.train_ds

    def val_dataset(self) -> Any | None:
        return self.val_ds if len(self.val_ds) else None

    def exclusions(self) -> dict[str, dict[str, int]]:
        return {"train": self.train_ds.exclusions(), "val": self.val_ds.exclusions()}


@dataclass
class TrainResult:
    """Outcome of :func:`fit`; ``history`` holds every epoch's ``EpochMetrics.as_dict()``."""

    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path
    epochs_done: int
    best_epoch: int | None
    best_score: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0
    device: str = "cpu"
    record: dict[str, Any] = field(default_factory=dict)

    def final_metrics(self) -> dict[str, Any]:
        return dict(self.history[-1]) if self.history else {}


# ----------------------------------------------------------------------------- device / precision
def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` = first CUDA device when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed), nothing on CPU (plain fp32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


# ----------------------------------------------------------------------------- sampling
class SeededSampler(Sampler):
    """Shuffles with its own generator and yields ``(index, aug_seed)`` pairs.

    The generator's state is the whole of the data-order randomness, so checkpointing
    ``state()`` makes resume exact. With ``shuffle=False`` it yields plain indices in order.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n = n
        self.shuffle = shuffle
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Any]:
        if not self.shuffle:
            yield from range(self.n)
            return
        order = torch.randperm(self.n, generator=self.generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=self.generator).tolist()
        yield from zip(order, seeds, strict=True)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    sampler: Sampler | None = None,
    workers: int = 0,
    device: torch.device | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """DataLoader with worker processes, pinned memory on CUDA and persistent workers.

    Persistent workers pay off because a stage iterates the same dataset every epoch and each
    worker keeps its HDF5 handles open; prefetch 4 batches per worker to hide read latency.
    """
    cuda = device is not None and device.type == "cuda"
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs = {"persistent_workers": True, "prefetch_factor": 4}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        pin_memory=cuda,
        drop_last=drop_last,
        **kwargs,
    )


# ----------------------------------------------------------------------------- optimiser
def build_optimizer(
    groups: list[dict[str, Any]], cfg: TrainConfig
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.MultiStepLR]:
    """SGD (Nesterov) over groups carrying ``lr_mult``; MultiStepLR at ``cfg.decay_epochs``.

    PyTorch's milestone convention: with ``decay_epochs=[5]`` epochs 1–5 (1-based) run at ``lr``
    and epoch 6 onwards at ``lr * lr_decay``.
    """
    param_groups = []
    for g in groups:
        params = [p for p in g["params"] if p.requires_grad]
        if not params:
            continue
        mult = float(g.get("lr_mult", 1.0))
        extra = {k: v for k, v in g.items() if k not in ("params", "lr_mult")}
        param_groups.append({"params": params, "lr": cfg.lr * mult, "lr_mult": mult, **extra})
    opt = torch.optim.SGD(
        param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.decay_epochs), gamma=cfg.lr_decay)
    return opt, sched


def base_lr(opt: torch.optim.Optimizer) -> float:
    """The current lr of a ×1 group (what the epoch record calls ``lr``)."""
    g = opt.param_groups[0]
    return float(g["lr"]) / float(g.get("lr_mult", 1.0))


# ----------------------------------------------------------------------------- checkpoints
def to_channels_last(model: nn.Module) -> nn.Module:
    """Put 2-D convolutions in channels_last, the layout bf16 convolutions are fastest in on CUDA.

    ``model.to(memory_format=torch.channels_last)`` would fail on the 5-D weights of the Conv3d
    temporal masks, so only Conv2d modules are converted.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.to(memory_format=torch.channels_last)
    return model


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary sibling, fsync, then ``os.replace`` (never a half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit` onto the CPU, with a clear error when it is not one."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure means an unreadable file
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a stapipe training checkpoint")
    return ckpt


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- fit
def fit(
    task: TrainTask,
    cfg: TrainConfig,
    out_dir: str | Path,
    callbacks: Callbacks = NO_CALLBACKS,
    resume: bool = True,
) -> TrainResult:
    """Train ``task`` for ``cfg.epochs`` epochs in total (see the module docstring)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    meta = task.meta()
    groups = task.param_groups(model)
    model.to(device)
    if cuda:
        to_channels_last(model)
    opt, sched = build_optimizer(groups, cfg)

    train_ds, val_ds = task.train_dataset(), task.val_dataset()
    if len(train_ds) == 0:
        raise ValueError("the training split has no samples")
    sampler = SeededSampler(len(train_ds), cfg.seed, shuffle=True)
    train_loader = make_loader(train_ds, cfg.batch_size, sampler=sampler, workers=cfg.workers, device=device)
    val_loader = None
    if val_ds is not None and len(val_ds) > 0:
        val_loader = make_loader(
            val_ds, cfg.batch_size, sampler=SeededSampler(len(val_ds), cfg.seed, shuffle=False),
            workers=cfg.workers, device=device,
        )

    start_epoch, history = 0, []
    best: dict[str, Any] = {"score": None, "epoch": None}
    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        if ckpt["meta"] != meta:
            raise ValueError(
                f"{last_path} was written for a different model ({ckpt['meta']}); "
                f"move it away or run with resume=False"
            )
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        sampler.load_state(ckpt["sampler"])
        _set_rng_state(ckpt["rng"])
        start_epoch, history, best = ckpt["epoch"], list(ckpt["history"]), dict(ckpt["best"])
        callbacks.log(f"resuming from {last_path} after epoch {start_epoch}")

    def snapshot(epoch: int) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "epoch": epoch, "meta": meta, "config": cfg.model_dump(),
            "model": _cpu_state(model), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "sampler": sampler.state(), "rng": _rng_state(), "history": history, "best": best,
        }

    if start_epoch == 0:
        best_path.unlink(missing_ok=True)  # a fresh run never inherits an older run's best
        atomic_save(snapshot(0), last_path)  # a cancel before epoch 1 still leaves a valid file

    n_batches = len(train_loader)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        loss_sum, n_sum = 0.0, 0
        for i, batch in enumerate(train_loader):
            callbacks.check_cancel()  # last.pt already holds the last complete epoch
            with autocast_for(device):
                loss, n = task.loss(model, batch, device)
            value = float(loss.detach())
            if not math.isfinite(value):  # stop before a NaN step poisons the weights (and last.pt)
                raise FloatingPointError(
                    f"training diverged: loss is {value} in epoch {epoch}, batch {i + 1}; "
                    f"lower the learning rate (lr={cfg.lr:g})"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += value * n
            n_sum += n
            callbacks.on_progress(i + 1, n_batches, f"epoch {epoch}")
        train_seconds = time.perf_counter() - t0
        lr_used = base_lr(opt)
        sched.step()

        val: dict[str, float] = {}
        if val_loader is not None:
            callbacks.check_cancel()
            model.eval()
            with torch.no_grad(), autocast_for(device):
                val = dict(task.validate(model, val_loader, device))
            model.train()
        seconds = time.perf_counter() - t0
        extra = {k: float(v) for k, v in val.items() if k not in ("val_loss", "val_accuracy", "score")}
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=loss_sum / max(n_sum, 1),
            val_loss=float(val["val_loss"]) if "val_loss" in val else None,
            val_accuracy=float(val["val_accuracy"]) if "val_accuracy" in val else None,
            lr=lr_used,
            seconds=seconds,
            samples_per_s=n_sum / max(train_seconds, 1e-9),
            extra=extra,
        )
        history.append(metrics.as_dict())
        score = float(val["score"]) if "score" in val else None
        improved = val_loader is None or (
            score is not None and (best["score"] is None or score > best["score"])
        )
        if improved:
            best = {"score": score, "epoch": epoch}
        state = snapshot(epoch)
        atomic_save(state, last_path)
        if improved:
            atomic_save(
                {"format": CHECKPOINT_FORMAT, "epoch": epoch, "meta": meta, "config": cfg.model_dump(),
                 "model": state["model"], "metrics": metrics.as_dict(), "best": best},
                best_path,
            )
        callbacks.on_epoch(metrics)
        callbacks.log(epoch_line(epoch, cfg.epochs, metrics, seconds))

    if not best_path.exists():  # resumed a finished run whose best.pt was removed, or epochs == 0
        ckpt = load_checkpoint(last_path)
        atomic_save({**{k: ckpt[k] for k in ("format", "epoch", "meta", "config", "model", "best")},
                     "metrics": ckpt["history"][-1] if ckpt["history"] else {}}, best_path)
    return TrainResult(
        out_dir=out_dir, last_checkpoint=last_path, best_checkpoint=best_path,
        epochs_done=max(start_epoch, len(history)), best_epoch=best["epoch"], best_score=best["score"],
        history=history, resumed_from=start_epoch, device=str(device),
    )


__all__ = [
    "Cancelled", "SeededSampler", "TrainResult", "TrainTask", "atomic_save", "autocast_for",
    "base_lr", "build_optimizer", "fit", "load_checkpoint", "make_loader", "resolve_device",
]


def fit_and_record(
    task: SplitDatasetTask,
    cfg: TrainConfig,
    out_dir: str | Path,
    callbacks: Callbacks,
    resume: bool,
    *,
    name: str,
    best_key: str,
    selection: str,
    extra: dict[str, Any],
) -> TrainResult:
    """:func:`fit` plus what every stage reports: excluded samples in the log, and ``record.json``
    (settings, weight sources, sample counts, history, the best epoch as ``best_key``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    excluded = task.exclusions()
    for split, counts in excluded.items():
        if counts:
            callbacks.log(f"{name} {split}: excluded {counts}")
    callbacks.log(f"{name}: {len(task.train_ds)} train / {len(task.val_ds)} val samples")
    result = fit(task, cfg, out_dir, callbacks, resume=resume)  # type: ignore[arg-type]
    record = {
        **extra,
        "config": cfg.model_dump(),
        "weights": getattr(task, "weights", {}),
        "samples": {"train": len(task.train_ds), "val": len(task.val_ds)},
        "excluded": excluded,
        "epochs_done": result.epochs_done,
        "resumed_from_epoch": result.resumed_from,
        "best_epoch": result.best_epoch,
        best_key: result.best_score,
        "selection": selection if len(task.val_ds) else "no validation samples: best = last",
        "final_metrics": result.final_metrics(),
        "history": result.history,
        "device": result.device,
        "last_checkpoint": result.last_checkpoint.name,
        "best_checkpoint": result.best_checkpoint.name,
    }
    write_json_atomic(out_dir / "record.json", record)
    result.record = record
    return result
