"""Checkpoint safety of ``trainer.fit``: resume with changed settings, the crash window, disk full,
unreadable checkpoints, retention after success, and the 1-sample last batch (issues #14, #16, #18).

A toy task (a BatchNorm1d + Linear regression) keeps these fast; the trainer is the real one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from sta_models import trainer
from sta_models.callbacks import Callbacks
from sta_models.config import TrainConfig
from sta_models.trainer import DiskFull, fit, load_checkpoint

from .conftest import ToyData

BASE = dict(epochs=3, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.0, decay_epochs=[2], device="cpu",
            workers=0, seed=1)


class _Task:
    """BatchNorm1d raises on a training batch of one sample: the trainer must never feed it one."""

    def __init__(self, n_train: int = 32) -> None:
        self.n_train = n_train
        self.train_ds, self.val_ds = ToyData(n_train, 0), ToyData(16, 1)

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 1))

    def param_groups(self, model):
        return [{"params": list(model.parameters()), "lr_mult": 1.0}]

    def train_dataset(self):
        return self.train_ds

    def val_dataset(self):
        return self.val_ds

    def loss(self, model, batch, device):
        return nn.functional.mse_loss(model(batch["x"])[:, 0], batch["y"]), len(batch["y"])

    def validate(self, model, loader, device):
        errs = torch.cat([(model(b["x"])[:, 0] - b["y"]) ** 2 for b in loader])
        return {"val_loss": float(errs.mean()), "score": 0.0}  # constant: best = epoch 1

    def meta(self):
        return {"task": "toy"}


def _cbs(log: list[str] | None = None, epochs: list[int] | None = None) -> Callbacks:
    def on_epoch(m):
        if epochs is not None:
            epochs.append(m.epoch)

    return Callbacks(epoch_end=on_epoch, message=(log.append if log is not None else None))


class _Counting(_Task):
    """Counts validations so the score peaks in epoch 2 of 3 wherever the weights go (best != last)."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []

    def validate(self, model, loader, device):
        self.epochs.append(1)
        out = super().validate(model, loader, device)
        return {**out, "score": -abs(len(self.epochs) - 2)}


def test_resume_with_changed_settings_is_refused_naming_the_fields(tmp_path: Path) -> None:
    cfg = TrainConfig(**BASE)
    with pytest.raises(RuntimeError, match="stop"):
        fit(_Counting(), cfg, tmp_path, Callbacks(epoch_end=lambda m: (_ for _ in ()).throw(RuntimeError("stop"))))
    changed = cfg.model_copy(update={"lr": 0.01, "weight_decay": 1e-4, "decay_epochs": [3]})
    with pytest.raises(ValueError) as err:
        fit(_Counting(), changed, tmp_path)
    msg = str(err.value)
    assert "cannot resume after epoch 1" in msg
    assert "lr 0.05 → 0.01" in msg and "weight_decay 0.0 → 0.0001" in msg and "decay_epochs [2] → [3]" in msg
    assert "momentum" not in msg and load_checkpoint(tmp_path / "last.pt")["epoch"] == 1  # nothing touched

    # applied explicitly: the optimiser runs on the new values and the record says so
    log: list[str] = []
    res = fit(_Counting(), changed.model_copy(update={"on_resume_change": "apply"}), tmp_path, _cbs(log))
    assert [h["lr"] for h in res.history] == pytest.approx([0.05, 0.01, 0.01])  # decay now after epoch 3
    assert res.record["resume_changes"]["lr"] == [0.05, 0.01]
    assert any("applying changed settings from epoch 2" in line for line in log)


def test_crash_between_last_and_best_is_completed_on_resume(tmp_path: Path, monkeypatch) -> None:
    """The crash window: killed after last.pt (the commit point) but before best.pt is in place."""
    real_replace = os.replace

    def crash_on_best(src, dst):
        if Path(dst).name == "best.pt" and load_checkpoint(src)["epoch"] == 2:
            raise KeyboardInterrupt("simulated kill between the two writes")
        return real_replace(src, dst)

    monkeypatch.setattr(trainer.os, "replace", crash_on_best)
    with pytest.raises(KeyboardInterrupt):
        fit(_Counting(), TrainConfig(**BASE, keep_checkpoints="all"), tmp_path)
    monkeypatch.setattr(trainer.os, "replace", real_replace)
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 2 and last["best"]["epoch"] == 2
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1  # the window: best.pt is behind last.pt
    assert (tmp_path / "best.pt.pending").exists()

    task = _Counting()
    task.epochs = [1, 1]  # two validations already happened
    res = fit(task, TrainConfig(**BASE, keep_checkpoints="all"), tmp_path)
    assert res.best_epoch == 2 == load_checkpoint(tmp_path / "best.pt")["epoch"]
    assert not (tmp_path / "best.pt.pending").exists()


def test_crash_before_the_commit_point_drops_the_pending_best(tmp_path: Path, monkeypatch) -> None:
    real_replace = os.replace

    def crash_on_last(src, dst):
        if Path(dst).name == "last.pt" and Path(src).name == ".last.pt.next" and load_checkpoint(src)["epoch"] == 2:
            raise KeyboardInterrupt("simulated kill before last.pt")
        return real_replace(src, dst)

    monkeypatch.setattr(trainer.os, "replace", crash_on_last)
    with pytest.raises(KeyboardInterrupt):
        fit(_Counting(), TrainConfig(**BASE), tmp_path)
    monkeypatch.setattr(trainer.os, "replace", real_replace)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / "best.pt.pending")["epoch"] == 2  # written, never committed
    task = _Counting()
    task.epochs = [1]
    log: list[str] = []
    res = fit(task, TrainConfig(**BASE, keep_checkpoints="all"), tmp_path, _cbs(log))
    assert res.resumed_from == 1 and res.best_epoch == 2 == load_checkpoint(tmp_path / "best.pt")["epoch"]


def test_disk_full_is_one_clear_error_and_a_rerun_resumes(tmp_path: Path) -> None:
    """A real ENOSPC: the temporary checkpoint name is made a link to /dev/full (writes fail in the kernel)."""
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is needed to produce a real ENOSPC")
    cfg = TrainConfig(**BASE)
    epochs: list[int] = []

    def fill_disk_after_epoch_1(m):
        epochs.append(m.epoch)
        if m.epoch == 1:
            os.symlink("/dev/full", tmp_path / f".{trainer.PENDING}.{os.getpid()}.tmp")  # epoch 2 improves

    with pytest.raises(DiskFull) as err:
        fit(_Counting(), cfg, tmp_path, Callbacks(epoch_end=fill_disk_after_epoch_1))
    msg = str(err.value)
    assert msg.startswith("no space left on device (") and "bytes free)" in msg and err.value.errno == 28
    assert str(tmp_path) not in msg  # no absolute server path
    from worker.stage_runner import one_line

    assert one_line(err.value) == f"DiskFull: {msg}"  # the stage's error_summary
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # temporaries removed
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1  # the last good epoch is intact
    # space freed (the links are gone): a re-run resumes after epoch 1
    res = fit(_Counting(), cfg, tmp_path, _cbs(epochs=epochs))
    assert res.resumed_from == 1 and epochs == [1, 2, 3]


def test_unreadable_last_falls_back_to_prev_then_to_a_fresh_start(tmp_path: Path) -> None:
    cfg = TrainConfig(**BASE)
    with pytest.raises(RuntimeError):
        fit(_Counting(), cfg, tmp_path, Callbacks(
            epoch_end=lambda m: (_ for _ in ()).throw(RuntimeError("stop")) if m.epoch == 2 else None))
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2 and load_checkpoint(tmp_path / "prev.pt")["epoch"] == 1
    (tmp_path / "last.pt").write_bytes(b"\0" * 100)  # a torn or bit-rotted file
    log: list[str] = []
    epochs: list[int] = []
    res = fit(_Counting(), cfg, tmp_path, _cbs(log, epochs))
    assert res.resumed_from == 1 and epochs == [2, 3]
    assert any("last.pt" in line and "moved it to last.pt.corrupt" in line for line in log)
    assert any("resuming from the previous checkpoint prev.pt (epoch 1)" in line for line in log)

    # both unreadable → a fresh start, said in the log; never stuck
    with pytest.raises(RuntimeError):
        fit(_Counting(), cfg, tmp_path / "b", Callbacks(
            epoch_end=lambda m: (_ for _ in ()).throw(RuntimeError("stop")) if m.epoch == 2 else None))
    for name in ("last.pt", "prev.pt"):
        (tmp_path / "b" / name).write_bytes(b"garbage")
    log.clear()
    res = fit(_Counting(), cfg, tmp_path / "b", _cbs(log))
    assert res.resumed_from == 0 and res.epochs_done == 3
    assert any("prev.pt" in line and "starting afresh" in line for line in log)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["best.pt"]  # set-aside files gone after success


def test_retention_after_success(tmp_path: Path) -> None:
    """#16: only best.pt (weights, no optimiser) is left; keep=all keeps last.pt without a second
    copy of the weights when best and last are the same epoch; a finished run is not retrained."""
    fit(_Task(), TrainConfig(**BASE), tmp_path / "needed")
    assert sorted(p.name for p in (tmp_path / "needed").iterdir()) == ["best.pt"]
    best = load_checkpoint(tmp_path / "needed" / "best.pt")
    assert "optimizer" not in best and "rng" not in best and best["finished"]["epochs"] == 3
    epochs: list[int] = []
    log: list[str] = []
    res = fit(_Task(), TrainConfig(**BASE), tmp_path / "needed", _cbs(log, epochs))
    assert epochs == [] and res.epochs_done == 3 and any("already trained" in line for line in log)

    fit(_Task(), TrainConfig(**BASE, keep_checkpoints="all"), tmp_path / "all")  # score constant: best = epoch 1
    names = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert names == ["best.pt", "last.pt"]
    fit(_Task(), TrainConfig(**{**BASE, "epochs": 1}, keep_checkpoints="all"), tmp_path / "same")
    raw = torch.load(tmp_path / "same" / "last.pt", weights_only=False)
    assert "model" not in raw and raw["model_from"] == "best.pt"  # one copy of the weights
    assert load_checkpoint(tmp_path / "same" / "last.pt")["model"].keys() == best["model"].keys()


def test_no_batchnorm_update_from_a_one_sample_last_batch(tmp_path: Path) -> None:
    """33 samples in batches of 8: the 1-sample batch would make BatchNorm1d raise in training."""
    task = _Task(n_train=33)
    log: list[str] = []
    res = fit(task, TrainConfig(**BASE), tmp_path, _cbs(log))
    assert res.epochs_done == 3
    assert any("last training batch of each epoch has 1 sample" in line for line in log)


def test_deterministic_mode_is_set_and_restored() -> None:
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    with trainer.DeterministicMode(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before


KILL_IN_WINDOW = """
import os, sys
from pathlib import Path
from sta_models import trainer
from sta_models.config import TrainConfig
from tests.models.test_checkpoints import BASE, _Counting
real = os.replace
def replace(src, dst):
    if Path(dst).name == "best.pt" and trainer.load_checkpoint(src)["epoch"] == 2:
        os._exit(9)  # the process dies between last.pt and best.pt: no finally, no cleanup
    return real(src, dst)
trainer.os.replace = replace
trainer.fit(_Counting(), TrainConfig(**BASE), Path(sys.argv[1]))
"""


def test_a_process_killed_in_the_window_resumes_consistently(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", KILL_IN_WINDOW, str(tmp_path)], cwd=root, timeout=300,
                          capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert load_checkpoint(tmp_path / "last.pt")["best"]["epoch"] == 2
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1  # the window
    task = _Counting()
    task.epochs = [1, 1]
    res = fit(task, TrainConfig(**BASE), tmp_path)
    assert res.best_epoch == 2 == load_checkpoint(tmp_path / "best.pt")["epoch"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
