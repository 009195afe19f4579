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


# ----------------------------------------------------------------------------- weights stored once


class _Scripted(_Task):
    """Epoch k scores ``SCORES[k - 1]`` and its weights are copied aside at validation (= what the
    epoch's checkpoint must hold): improving, improving, not, improving after not."""

    SCORES = (1.0, 2.0, 0.0, 3.0)

    def __init__(self, done: int = 0) -> None:
        super().__init__()
        self.n = done
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def validate(self, model, loader, device):
        self.n += 1
        self.weights[self.n] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {**super().validate(model, loader, device), "score": self.SCORES[self.n - 1]}


SCRIPTED = dict(BASE, epochs=len(_Scripted.SCORES))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _values(history: list[dict]) -> list[tuple]:
    return [(h["epoch"], h["train_loss"], h["val_loss"]) for h in history]


def test_an_improving_epoch_stores_its_weights_once(tmp_path: Path) -> None:
    """last.pt of a best epoch names best.pt's weights; prev.pt keeps its own epoch's weights
    (prev.weights.pt) after best.pt moved on — never best.pt's newer ones."""
    task = _Scripted()

    def stop_after_2(m):
        if m.epoch == 2:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        fit(task, TrainConfig(**SCRIPTED), tmp_path, Callbacks(epoch_end=stop_after_2))
    raw_last = torch.load(tmp_path / "last.pt", weights_only=False)
    raw_best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert "model" not in raw_last and raw_last["model_from"] == "best.pt"
    assert raw_last["weights_id"] == raw_best["weights_id"] and raw_best["epoch"] == 2
    assert "model" not in torch.load(tmp_path / "prev.pt", weights_only=False)  # epoch 1 was the best too
    assert not os.path.samefile(tmp_path / "prev.weights.pt", tmp_path / "best.pt")  # epoch 1's best.pt, linked
    assert _same(load_checkpoint(tmp_path / "last.pt")["model"], task.weights[2])
    prev = load_checkpoint(tmp_path / "prev.pt")
    assert prev["epoch"] == 1 and _same(prev["model"], task.weights[1])
    assert not _same(prev["model"], raw_best["model"])

    # without the link prev.pt's weights are gone: a clear error, not best.pt's epoch 2
    os.link(tmp_path / "prev.weights.pt", tmp_path / "keep")
    (tmp_path / "prev.weights.pt").unlink()
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*prev.pt: no file holds its weights \(epoch 1"):
        load_checkpoint(tmp_path / "prev.pt")
    os.replace(tmp_path / "keep", tmp_path / "prev.weights.pt")

    # last.pt lost: the fallback resumes epoch 1's weights and ends where an uninterrupted run ends
    ref = _Scripted()
    want = fit(ref, TrainConfig(**SCRIPTED, keep_checkpoints="all"), tmp_path / "ref")
    (tmp_path / "last.pt").write_bytes(b"garbage")
    log: list[str] = []
    res = fit(_Scripted(done=1), TrainConfig(**SCRIPTED), tmp_path, _cbs(log))
    assert res.resumed_from == 1 and any("prev.pt (epoch 1)" in line for line in log)
    assert res.best_epoch == want.best_epoch == 4 and _values(res.history) == _values(want.history)
    assert _same(load_checkpoint(tmp_path / "best.pt")["model"], ref.weights[4])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "ref"]


def test_a_crash_at_every_write_step_resumes_exactly(tmp_path: Path, monkeypatch) -> None:
    """Killed before each link, replace and unlink of a whole run (every commit, the finish): at
    that instant last.pt and prev.pt load with their own epoch's weights, best.pt is no newer than
    what last.pt names, and the resumed run ends with the uninterrupted run's weights and history."""
    real = {name: getattr(os, name) for name in ("replace", "link", "unlink")}
    steps: list[str] = []
    crash_at = [-1]

    def patched(name):
        def op(*args, **kwargs):
            paths = [str(a) for a in args[:2]]
            if any(p.startswith(str(tmp_path)) for p in paths) and os.path.lexists(paths[0]):
                if len(steps) == crash_at[0]:
                    steps.append(f"{name} {[Path(p).name for p in paths]}")
                    raise KeyboardInterrupt(f"simulated kill before step {crash_at[0]}")
                steps.append(f"{name} {[Path(p).name for p in paths]}")
            return real[name](*args, **kwargs)
        return op

    for name in real:
        monkeypatch.setattr(os, name, patched(name))
    ref = _Scripted()
    want = fit(ref, TrainConfig(**SCRIPTED), tmp_path / "ref")
    n = len(steps)
    assert n > 4 * len(_Scripted.SCORES) and any("prev.weights.pt" in s for s in steps)
    for k in range(n):
        d = tmp_path / f"k{k}"
        steps.clear()
        crash_at[0] = k
        with pytest.raises(KeyboardInterrupt):
            fit(_Scripted(), TrainConfig(**SCRIPTED), d)
        crash_at[0] = -1
        where = f"crash before step {k}: {steps[-1]}"
        done = 0
        if (d / "last.pt").exists():
            last = load_checkpoint(d / "last.pt")
            done = last["epoch"]
            if done:
                assert _same(last["model"], ref.weights[done]), where
            if (d / "prev.pt").exists():
                prev = load_checkpoint(d / "prev.pt")
                assert prev["epoch"] in (done - 1, done), where
                if prev["epoch"]:
                    assert _same(prev["model"], ref.weights[prev["epoch"]]), where
            if (d / "best.pt").exists():
                best = load_checkpoint(d / "best.pt")
                assert best["epoch"] <= last["best"]["epoch"], where
                assert _same(best["model"], ref.weights[best["epoch"]]), where
        else:  # before the first commit, or after the finished best.pt let last.pt go
            if (d / "best.pt").exists():
                assert load_checkpoint(d / "best.pt").get("finished"), where
            else:
                assert not list(d.glob("[!.]*")), where  # temporaries only: reconcile drops them
        res = fit(_Scripted(done=done), TrainConfig(**SCRIPTED), d)
        assert res.best_epoch == want.best_epoch, where
        assert _values(res.history) == _values(want.history), where
        assert _same(load_checkpoint(d / "best.pt")["model"], ref.weights[want.best_epoch]), where
        assert sorted(p.name for p in d.iterdir()) == ["best.pt"], where
