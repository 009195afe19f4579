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
cancel always leaves a consistent file) with the previous one kept as ``prev.pt``, and
``out_dir/best.pt`` (weights + meta + metrics, best ``score`` on the validation split only; without
a validation split, best = last), written in the crash-safe order of :func:`commit_epoch`.
``resume=True`` restores model, optimiser, scheduler, sampler generator and RNG states from
``last.pt`` (``prev.pt`` if it is unreadable) and continues after its epoch — refused when the
training settings changed (:data:`RESUME_FIELDS`) unless ``cfg.on_resume_change == "apply"``;
``on_epoch`` is never emitted again for epochs already done (their metrics are in
``TrainResult.history``). After the last epoch only ``best.pt`` stays (``cfg.keep_checkpoints``).
A task may carry ``recipe`` (``sta_models.scratch.ScratchRecipe``): warm-up and clipping then apply.
"""

from __future__ import annotations

import errno
import math
import os
import random
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from sta_models.batchnorm import recompute_batchnorm
from sta_models.callbacks import NO_CALLBACKS, Callbacks, Cancelled, EpochMetrics, epoch_line
from sta_models.config import TrainConfig
from sta_models.jsonio import write_json_atomic
from sta_models.scratch import random_sources, warmup_factor
from sta_models.training_health import nan_warnings

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


class SplitTrainTask(TrainTask, Protocol):
    """A :class:`TrainTask` built on :class:`SplitDatasetTask` (what :func:`fit_and_record` takes)."""

    train_ds: Any
    val_ds: Any

    def exclusions(self) -> dict[str, dict[str, int]]: ...


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


def autocast_for(device: torch.device) -> AbstractContextManager[Any]:
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


class DiskFull(OSError):
    """A checkpoint could not be written for lack of space; its temporary file is already gone."""


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT anywhere in the chain, or torch's zip writer failing mid-file (its own text)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if isinstance(seen, RuntimeError) and ("unexpected pos" in text or "No space left" in text
                                               or "failed writing" in text):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def short_path(path: Path) -> str:
    """``<stage folder>/<file>``: enough to find the file, no absolute server path in messages."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary sibling, fsync, then ``os.replace`` (never a half file).

    Any failure removes the temporary file; running out of space raises :class:`DiskFull` with
    "no space left on device (path, free bytes)" — the files already there are untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and _is_disk_full(exc):
            free = shutil.disk_usage(path.parent).free
            full = DiskFull(f"no space left on device ({short_path(path)}, {free} bytes free)")
            full.errno = errno.ENOSPC
            raise full from exc
        raise


def _read(path: Path, mmap: bool = False) -> dict[str, Any]:
    """One checkpoint file as written (``mmap``: tensors stay on disk, for a look at the metadata)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any failure means an unreadable file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"cannot read checkpoint {short_path(path)}: {first}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{short_path(path)} is not a stapipe training checkpoint")
    return ckpt


def weights_file(path: Path, ckpt: dict[str, Any]) -> Path | None:
    """The sibling file holding the weights of a checkpoint stored without its own (None: inline).

    A ``weights_id`` is looked for in ``model_from``, its ``.pending`` file (the commit window of
    :func:`commit_epoch`) and ``prev.weights.pt`` (prev.pt's weights once best.pt moved on), and
    only a file carrying the same id counts: a best.pt of another epoch is never taken for them.
    """
    if "model" in ckpt or not ckpt.get("model_from"):
        return None
    name, want = ckpt["model_from"], ckpt.get("weights_id")
    if want is None:  # written by keep_after_success before weights ids existed
        return path.with_name(name)
    for cand in dict.fromkeys((name, name + ".pending", PREV_WEIGHTS)):
        p = path.with_name(cand)
        try:
            if p.exists() and _read(p, mmap=True).get("weights_id") == want:
                return p
        except ValueError:
            continue
    raise ValueError(f"cannot read checkpoint {short_path(path)}: no file holds its weights "
                     f"(epoch {ckpt.get('epoch')}, stored once in {name})")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit` onto the CPU, with a clear error when it is not one.

    A ``last.pt`` (or ``prev.pt``) whose epoch is the best one holds no ``model`` of its own: the
    weights are stored once, in best.pt (see :func:`commit_epoch`); they are filled in here.
    """
    path = Path(path)
    ckpt = _read(path)
    held = weights_file(path, ckpt)
    if held is not None:
        ckpt["model"] = _read(held)["model"]
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


# ----------------------------------------------------------------------------- checkpoint files
LAST, PREV, BEST, PENDING = "last.pt", "prev.pt", "best.pt", "best.pt.pending"
#: a hard link of the best.pt whose weights prev.pt names, kept once best.pt has moved on
PREV_WEIGHTS = "prev.weights.pt"

#: settings that change what the next epochs compute; a resume must not silently keep the old ones
RESUME_FIELDS = ("lr", "decay_epochs", "lr_decay", "weight_decay", "momentum", "batch_size", "seed",
                 "input_size", "backbone_weights", "audio_weights", "scratch_recipe", "deterministic")


#: what a checkpoint written before a field existed was trained with (the recipe came later)
LEGACY_VALUES = {"scratch_recipe": "off"}


def settings_changes(old: dict[str, Any], new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (checkpoint's value, new value)}`` for every :data:`RESUME_FIELDS` that differs."""
    defaults = TrainConfig.model_fields
    now = new.model_dump()
    out = {}
    for name in RESUME_FIELDS:
        was = old.get(name, LEGACY_VALUES.get(name, defaults[name].default))
        if was != now[name]:
            out[name] = (was, now[name])
    return out


def _link(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link of ``src`` in one step (``os.replace`` of a fresh link).

    Already one file (a crash between this and the commit point): nothing to do — a rename onto
    a link of the same inode is a no-op that would leave the temporary name behind.
    """
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    os.link(src, tmp)
    os.replace(tmp, dst)


def commit_epoch(out_dir: Path, state: dict[str, Any], best_state: dict[str, Any] | None) -> None:
    """Write one epoch's files in the only order no crash can make inconsistent.

    An improving epoch stores its weights once: ``best_state`` (the same ``model`` as ``state``)
    carries them, and ``last.pt`` names them (``model_from: best.pt`` + a ``weights_id``).

    1. ``prev.pt`` becomes a hard link of the current ``last.pt`` (the fallback), and
       ``prev.weights.pt`` a hard link of the file holding its weights if they are not inline
       (best.pt is about to move on; the link keeps that epoch's weights at no cost);
    2. ``best.pt.pending`` (only when the epoch improved);
    3. the new state is ``os.replace``-d in as ``last.pt`` — **the commit point**;
    4. the pending file becomes ``best.pt``.
    A crash before 3 leaves the previous epoch as last.pt (the pending file is dropped on resume);
    a crash after 3 is completed on resume by :func:`reconcile` (last.pt names the weights, which
    :func:`weights_file` finds in the pending file meanwhile). Every step replaces a name by a
    complete file, so last.pt and prev.pt are loadable at every instant.
    """
    pending, last, prev, prev_weights = out_dir / PENDING, out_dir / LAST, out_dir / PREV, out_dir / PREV_WEIGHTS
    if best_state is not None:
        if best_state.get("model") is not state.get("model"):
            raise ValueError("commit_epoch: best_state must hold the same weights as state")
        wid = uuid.uuid4().hex
        best_state = {**best_state, "weights_id": wid}
        state = {**{k: v for k, v in state.items() if k != "model"}, "model_from": BEST, "weights_id": wid}
    rotate, held = last.exists(), None
    if rotate:
        try:
            held = weights_file(last, _read(last, mmap=True))
        except ValueError:  # unreadable since it was written: no fallback to keep; prev.pt stays
            rotate = False
    if rotate:  # hard links, so that a last.pt and a prev.pt are there at every instant
        _link(last, prev)
        if held is None:
            prev_weights.unlink(missing_ok=True)
        elif held != prev_weights:
            _link(held, prev_weights)
    if best_state is not None:
        atomic_save(best_state, pending)
    tmp_last = out_dir / f".{LAST}.next"
    atomic_save(state, tmp_last)
    os.replace(tmp_last, last)
    if best_state is not None:
        os.replace(pending, out_dir / BEST)


def _checkpoint_epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # noqa: BLE001 - an unreadable file simply does not count
        return None


def _checkpoint_best(path: Path) -> dict[str, Any] | None:
    try:
        return dict(torch.load(path, map_location="cpu", weights_only=False)["best"])
    except Exception:  # noqa: BLE001 - missing or unreadable: nothing to adopt
        return None


def reconcile(out_dir: Path, last_best_epoch: int | None) -> None:
    """Finish or drop an interrupted :func:`commit_epoch`: keep ``best.pt.pending`` only if it is
    the best epoch the committed ``last.pt`` names; stray temporary files go."""
    pending = out_dir / PENDING
    if pending.exists():
        if last_best_epoch is not None and _checkpoint_epoch(pending) == last_best_epoch:
            os.replace(pending, out_dir / BEST)
        else:
            pending.unlink()
    for tmp in out_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    for name in (f".{LAST}.next", f".{PREV}.link", f".{PREV_WEIGHTS}.link"):
        (out_dir / name).unlink(missing_ok=True)


def load_resumable(out_dir: Path, meta: dict[str, Any], callbacks: Callbacks) -> dict[str, Any] | None:
    """The newest readable resume state: ``last.pt``, else ``prev.pt`` (said in the log), else None.

    An unreadable file is renamed ``*.corrupt`` so no later run trips over it; a checkpoint of a
    *different model* is an error, never skipped silently.
    """
    for name in (LAST, PREV):
        path = out_dir / name
        if not path.exists():
            continue
        try:
            ckpt = load_checkpoint(path)
        except ValueError as exc:
            os.replace(path, path.with_name(path.name + ".corrupt"))
            callbacks.log(f"{exc}; moved it to {path.name}.corrupt and "
                          f"{'trying prev.pt' if name == LAST else 'starting afresh'}")
            continue
        if ckpt["meta"] != meta:
            raise ValueError(f"{short_path(path)} was written for a different model ({ckpt['meta']}); "
                             f"move it away or run with resume=False")
        if name == PREV:
            callbacks.log(f"resuming from the previous checkpoint prev.pt (epoch {ckpt['epoch']})")
        return ckpt
    return None


def keep_after_success(out_dir: Path, keep: str, best_epoch: int | None, last_epoch: int) -> None:
    """After the last epoch: ``needed`` keeps only ``best.pt`` (weights; all that CAMs, STA,
    reuse and inference read); ``all`` also keeps ``last.pt`` — without a second copy of the
    weights when best and last are the same epoch (``model_from: best.pt``)."""
    for name in (PREV, PREV_WEIGHTS):
        (out_dir / name).unlink(missing_ok=True)
    last = out_dir / LAST
    if keep != "all":
        last.unlink(missing_ok=True)
        for bad in out_dir.glob("*.pt.corrupt"):  # the log said why they were set aside
            bad.unlink()
        return
    if last.exists() and best_epoch == last_epoch:
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        if "model" in ckpt:  # a run resumed from files of before weights were stored once
            ckpt.pop("model")
            wid = torch.load(out_dir / BEST, map_location="cpu", weights_only=False).get("weights_id")
            atomic_save({**ckpt, "model_from": BEST, **({"weights_id": wid} if wid else {})}, last)


def finished_run(out_dir: Path, meta: dict[str, Any], cfg: TrainConfig) -> dict[str, Any] | None:
    """A ``best.pt`` that says its run finished with this model and settings (its last.pt gone)."""
    best = out_dir / BEST
    if (out_dir / LAST).exists() or not best.exists():
        return None
    try:
        ckpt = load_checkpoint(best)
    except ValueError:
        return None
    if ckpt["meta"] != meta:
        raise ValueError(f"{short_path(best)} was written for a different model ({ckpt['meta']}); "
                         f"move it away or run with resume=False")
    done = ckpt.get("finished")
    if not done or settings_changes(ckpt["config"], cfg) or done["epochs"] != cfg.epochs:
        return None
    return ckpt


class DeterministicMode:
    """``train.deterministic``: deterministic cuDNN and algorithms for the run, restored after."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> DeterministicMode:
        if self.on:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            self._saved = (torch.are_deterministic_algorithms_enabled(),
                           torch.is_deterministic_algorithms_warn_only_enabled(),
                           torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        return self

    def __exit__(self, *exc: object) -> None:
        if self.on:
            algos, warn, cudnn_det, bench = self._saved
            torch.use_deterministic_algorithms(algos, warn_only=warn)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_det, bench


# ----------------------------------------------------------------------------- fit
def _size(ds: Dataset[Any]) -> int:
    """``len`` of a map-style dataset (they all define it; torch's ``Dataset`` type does not)."""
    return len(ds)  # type: ignore[arg-type]  # torch.utils.data.Dataset declares no __len__


def fit(
    task: TrainTask,
    cfg: TrainConfig,
    out_dir: str | Path,
    callbacks: Callbacks = NO_CALLBACKS,
    resume: bool = True,
) -> TrainResult:
    """Train ``task`` for ``cfg.epochs`` epochs in total (see the module docstring)."""
    with DeterministicMode(cfg.deterministic):
        return _fit(task, cfg, Path(out_dir), callbacks, resume)


def _apply_settings(opt: torch.optim.Optimizer, sched: Any, cfg: TrainConfig, epochs_done: int) -> None:
    """Put the new config's lr schedule, weight decay and momentum on a resumed optimiser."""
    sched.milestones = Counter(cfg.decay_epochs)
    sched.gamma = cfg.lr_decay
    factor = cfg.lr_decay ** sum(1 for m in cfg.decay_epochs if m <= epochs_done)
    for g in opt.param_groups:
        g["initial_lr"] = cfg.lr * float(g.get("lr_mult", 1.0))
        g["lr"] = g["initial_lr"] * factor
        g["weight_decay"], g["momentum"] = cfg.weight_decay, cfg.momentum
        g["nesterov"] = cfg.momentum > 0
    sched.base_lrs = [g["initial_lr"] for g in opt.param_groups]


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _precise_batchnorm(task: TrainTask, model: nn.Module, train_ds: Dataset[Any], cfg: TrainConfig, epoch: int,
                       device: torch.device, max_batches: int, callbacks: Callbacks) -> None:
    """Recompute BatchNorm statistics from training batches of the epoch's final weights
    (``sta_models.batchnorm``). Its own seeded order (seed, epoch), so the training sampler's
    state, and with it an exact resume, is untouched; a final batch of 1 sample is left out."""
    n = _size(train_ds)
    sampler = SeededSampler(n, cfg.seed * 100_003 + epoch, shuffle=True)
    loader = make_loader(train_ds, cfg.batch_size, sampler=sampler, workers=cfg.workers, device=device,
                         drop_last=n % cfg.batch_size == 1 and n > 1)
    total = min(len(loader), max_batches)

    def forward(batch: Any) -> None:
        callbacks.check_cancel()
        with autocast_for(device):
            task.loss(model, batch, device)

    recompute_batchnorm(model, loader, forward, max_batches,
                        on_batch=lambda i: callbacks.on_progress(i, total, f"epoch {epoch} · BatchNorm statistics"))


def _fit(task: TrainTask, cfg: TrainConfig, out_dir: Path, callbacks: Callbacks, resume: bool) -> TrainResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / LAST, out_dir / BEST
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    meta = task.meta()
    recipe = getattr(task, "recipe", None)
    callbacks.on_started({"recipe": recipe.record() if recipe is not None else None,
                          "random_init": random_sources(getattr(task, "weights", {}))})
    groups = task.param_groups(model)
    callbacks.log(f"training on {device}" + ("" if cuda else f" with {torch.get_num_threads()} CPU thread(s)"))
    model.to(device)
    if cuda:
        to_channels_last(model)
    opt, sched = build_optimizer(groups, cfg)

    train_ds, val_ds = task.train_dataset(), task.val_dataset()
    if _size(train_ds) == 0:
        raise ValueError("the training split has no samples")
    sampler = SeededSampler(_size(train_ds), cfg.seed, shuffle=True)
    train_loader = make_loader(train_ds, cfg.batch_size, sampler=sampler, workers=cfg.workers, device=device)
    val_loader = None
    if val_ds is not None and _size(val_ds) > 0:
        val_loader = make_loader(
            val_ds, cfg.batch_size, sampler=SeededSampler(_size(val_ds), cfg.seed, shuffle=False),
            workers=cfg.workers, device=device,
        )

    start_epoch, history = 0, []
    best: dict[str, Any] = {"score": None, "epoch": None}
    changes: dict[str, tuple[Any, Any]] = {}
    done = finished_run(out_dir, meta, cfg) if resume else None
    if done is not None:  # finished earlier and its last.pt was let go: nothing to do
        callbacks.log(f"already trained: {best_path.name} holds the finished run (best epoch {done['best']['epoch']})")
        fin = done["finished"]
        return TrainResult(out_dir=out_dir, last_checkpoint=last_path, best_checkpoint=best_path,
                           epochs_done=fin["epochs"], best_epoch=done["best"]["epoch"],
                           best_score=done["best"]["score"], history=list(fin["history"]),
                           resumed_from=fin["epochs"], device=str(device),
                           record={"recipe": fin.get("recipe"), "resume_changes": fin.get("resume_changes", {})})
    if resume and best_path.exists() and not last_path.exists() and not (out_dir / PREV).exists():
        callbacks.log(f"{best_path.name} is a finished run with other settings or epochs: training afresh")
    ckpt = load_resumable(out_dir, meta, callbacks) if resume else None
    reconcile(out_dir, ckpt["best"]["epoch"] if ckpt else None)
    if ckpt is not None:
        new = settings_changes(ckpt["config"], cfg)
        recipe_now = recipe.name if recipe is not None else None
        if "recipe" in ckpt and ckpt["recipe"] != recipe_now:
            new["recipe"] = (ckpt["recipe"], recipe_now)
        listed = ", ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in new.items())
        if new and cfg.on_resume_change != "apply":
            raise ValueError(f"cannot resume after epoch {ckpt['epoch']}: the training settings changed ({listed}); "
                             f"restore them, set on_resume_change: apply, or delete {short_path(last_path)} "
                             f"and prev.pt to start afresh")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        sampler.load_state(ckpt["sampler"])
        _set_rng_state(ckpt["rng"])
        start_epoch, history, best = ckpt["epoch"], list(ckpt["history"]), dict(ckpt["best"])
        ahead = _checkpoint_best(best_path)
        if ahead is not None and (ahead["epoch"] or 0) > start_epoch:
            best = ahead  # fell back to prev.pt: best.pt is newer and stays what the record names
        callbacks.log(f"resuming after epoch {start_epoch}")
        if new:
            _apply_settings(opt, sched, cfg, start_epoch)
            callbacks.log(f"applying changed settings from epoch {start_epoch + 1}: {listed}")
        changes = {**dict(ckpt.get("resume_changes", {})), **new}
    changes_json = {k: [a, b] for k, (a, b) in changes.items()}

    def snapshot(epoch: int) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "epoch": epoch, "meta": meta, "config": cfg.model_dump(),
            "model": _cpu_state(model), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "sampler": sampler.state(), "rng": _rng_state(), "history": history, "best": best,
            "resume_changes": changes_json, "recipe": recipe.name if recipe is not None else None,
        }

    def weights_only(state: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "epoch": state["epoch"], "meta": meta, "config": cfg.model_dump(),
                "model": state["model"], "metrics": metrics, "best": best}

    if start_epoch == 0:
        for stale in (best_path, out_dir / PREV, out_dir / PREV_WEIGHTS, last_path):
            stale.unlink(missing_ok=True)  # a fresh run never inherits (or falls back to) an older run's files
        commit_epoch(out_dir, snapshot(0), None)  # a cancel before epoch 1 still leaves a valid file

    n_batches = len(train_loader)
    # BatchNorm must not learn statistics from a last batch of one sample: that batch is skipped
    skip_last = _size(train_ds) % cfg.batch_size == 1 and _size(train_ds) > 1 and _has_batchnorm(model)
    if skip_last:
        callbacks.log(f"the last training batch of each epoch has 1 sample ({_size(train_ds)} samples, batch "
                      f"{cfg.batch_size}); it is skipped so BatchNorm never updates from it")
    params = [p for g in opt.param_groups for p in g["params"]]
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        loss_sum, n_sum = 0.0, 0
        scheduled = [g["lr"] for g in opt.param_groups]
        for i, batch in enumerate(train_loader):
            callbacks.check_cancel()  # last.pt already holds the last complete epoch
            if skip_last and i == n_batches - 1:
                callbacks.on_progress(i + 1, n_batches, f"epoch {epoch}")
                continue
            if recipe is not None and recipe.warmup_epochs > 0:
                f = warmup_factor((epoch - 1) * n_batches + i, n_batches, recipe.warmup_epochs)
                for g, lr in zip(opt.param_groups, scheduled, strict=True):
                    g["lr"] = lr * f
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
            if recipe is not None and recipe.clip_norm:
                torch.nn.utils.clip_grad_norm_(params, recipe.clip_norm)
            opt.step()
            loss_sum += value * n
            n_sum += n
            callbacks.on_progress(i + 1, n_batches, f"epoch {epoch}")
        for g, lr in zip(opt.param_groups, scheduled, strict=True):
            g["lr"] = lr  # the warm-up never leaks into the scheduler's state
        train_seconds = time.perf_counter() - t0
        lr_used = base_lr(opt)
        sched.step()

        if recipe is not None and recipe.bn_statistics == "precise":
            _precise_batchnorm(task, model, train_ds, cfg, epoch, device, recipe.bn_batches, callbacks)
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
        commit_epoch(out_dir, state, weights_only(state, metrics.as_dict()) if improved else None)
        callbacks.on_epoch(metrics)
        callbacks.log(epoch_line(epoch, cfg.epochs, metrics, seconds))

    final = load_checkpoint(last_path)
    if not best_path.exists():  # resumed a finished run whose best.pt was removed, or epochs == 0
        atomic_save(weights_only(final, final["history"][-1] if final["history"] else {}), best_path)
    # best.pt says the run is finished, so a later call needs no last.pt to know it (retention)
    best_ckpt = torch.load(best_path, map_location="cpu", weights_only=False)
    best_ckpt["finished"] = {"epochs": cfg.epochs, "history": history, "resume_changes": changes_json,
                             "recipe": recipe.record() if recipe is not None else None}
    atomic_save(best_ckpt, best_path)
    keep_after_success(out_dir, cfg.keep_checkpoints, best["epoch"], final["epoch"])
    return TrainResult(
        out_dir=out_dir, last_checkpoint=last_path, best_checkpoint=best_path,
        epochs_done=max(start_epoch, len(history)), best_epoch=best["epoch"], best_score=best["score"],
        history=history, resumed_from=start_epoch, device=str(device),
        record={"recipe": recipe.record() if recipe is not None else None, "resume_changes": changes_json},
    )


__all__ = [
    "Cancelled", "SeededSampler", "TrainResult", "TrainTask", "atomic_save", "autocast_for",
    "base_lr", "build_optimizer", "fit", "load_checkpoint", "make_loader", "resolve_device",
]


def fit_and_record(
    task: SplitTrainTask,
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
    result = fit(task, cfg, out_dir, callbacks, resume=resume)
    check = getattr(task, "warnings", None)
    warnings = check(result.history) if check is not None else nan_warnings(result.history)
    for w in warnings:
        callbacks.log(f"WARNING {w['code']}: {w['message']}")
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
        "last_checkpoint": result.last_checkpoint.name if result.last_checkpoint.exists() else None,
        "best_checkpoint": result.best_checkpoint.name,
        "recipe": result.record.get("recipe"),
        "random_init": random_sources(getattr(task, "weights", {})),
        "resume_changes": result.record.get("resume_changes", {}),
        "warnings": warnings,
    }
    write_json_atomic(out_dir / "record.json", record)
    result.record = record
    return result
