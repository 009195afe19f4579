"""The generic trainer and ``train_branch``: checkpoints, exact resume, cancel, best model, record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sta_models.callbacks import Callbacks, Cancelled, EpochMetrics
from sta_models.config import TrainConfig
from sta_models.trainer import fit, load_checkpoint
from sta_models.training import train_branch

from .conftest import ToyData as _ToyData
from .conftest import make_row, write_features

CFG = dict(backbone="resnet18", input_size=32, epochs=3, batch_size=8, lr=1e-3, decay_epochs=[2],
           workers=0, device="cpu", seed=3, keep_checkpoints="all")


def _metrics(history: list[dict[str, Any]]) -> list[tuple]:
    return [(h["epoch"], h["train_loss"], h["val_loss"], h["val_accuracy"], h["lr"]) for h in history]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6, rtol=0), k


def test_interrupted_runs_resume_to_the_same_result(tiny_split, tmp_path: Path) -> None:
    splits, feat = tiny_split
    cfg = TrainConfig(**CFG)
    seen: list[int] = []
    full = train_branch("s", splits, feat, tmp_path / "full", cfg, Callbacks(epoch_end=lambda m: seen.append(m.epoch)),
                        use_cache=False)
    assert seen == [1, 2, 3] and full.epochs_done == 3
    assert [h["lr"] for h in full.history] == pytest.approx([1e-3, 1e-3, 1e-4])  # decay after epoch 2

    # (a) the epoch hook fails after epoch 1 (e.g. the database went away), then resume
    def boom(m: EpochMetrics) -> None:
        raise RuntimeError("db down")

    with pytest.raises(RuntimeError, match="db down"):
        train_branch("s", splits, feat, tmp_path / "a", cfg, Callbacks(epoch_end=boom), use_cache=False)
    assert load_checkpoint(tmp_path / "a" / "last.pt")["epoch"] == 1
    seen_a: list[int] = []
    res_a = train_branch("s", splits, feat, tmp_path / "a", cfg, Callbacks(epoch_end=lambda m: seen_a.append(m.epoch)),
                         use_cache=False)
    assert seen_a == [2, 3] and res_a.resumed_from == 1  # epoch 1 is never re-emitted

    # (b) cancelled in the middle of epoch 2: last.pt keeps epoch 1, resume finishes the job
    progress: list[str] = []
    cb = Callbacks(progress=lambda d, t, w: progress.append(f"{w}:{d}/{t}"),
                   cancel_requested=lambda: "epoch 2:1/3" in progress)
    with pytest.raises(Cancelled):
        train_branch("s", splits, feat, tmp_path / "b", cfg, cb, use_cache=False)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    res_b = train_branch("s", splits, feat, tmp_path / "b", cfg, use_cache=False)

    for res, name in ((res_a, "a"), (res_b, "b")):
        got, want = _metrics(res.history), _metrics(full.history)
        assert [g[0] for g in got] == [1, 2, 3]
        for g, w in zip(got, want, strict=True):
            assert g == pytest.approx(w, rel=1e-6, abs=1e-7)
        _assert_same_weights(tmp_path / name / "last.pt", tmp_path / "full" / "last.pt")
        assert res.best_epoch == full.best_epoch
    # a finished run resumed again does nothing and re-emits nothing
    again: list[int] = []
    res = train_branch("s", splits, feat, tmp_path / "full", cfg, Callbacks(epoch_end=lambda m: again.append(1)),
                       use_cache=False)
    assert again == [] and res.epochs_done == 3


def test_cancel_before_first_batch_leaves_a_valid_checkpoint(tiny_split, tmp_path: Path) -> None:
    splits, feat = tiny_split
    with pytest.raises(Cancelled):
        train_branch("s", splits, feat, tmp_path, TrainConfig(**CFG), Callbacks(cancel_requested=lambda: True),
                     use_cache=False)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 0 and ckpt["history"] == [] and not (tmp_path / "best.pt").exists()
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries


def test_best_checkpoint_record_and_exclusions(tmp_path: Path) -> None:
    feat = tmp_path / "feat"
    feat.mkdir()
    rows = {"train": [], "val": []}
    for c in range(2):
        for j in range(2):
            write_features(feat / f"v{c}{j}.h5", c, seconds=3, seed=c * 5 + j, invalid_audio=(1,) if j == 0 else ())
            rows["val" if j == 1 else "train"].append(make_row(f"v{c}{j}", c, 0, 3))
    cfg = TrainConfig(**{**CFG, "epochs": 2, "batch_size": 4})
    res = train_branch("sa", rows, feat, tmp_path / "out", cfg, use_cache=False)
    record = json.loads((tmp_path / "out" / "record.json").read_text())
    assert record["weights"] == {"backbone": "random init", "audio": "random init"}
    assert record["excluded"] == {"train": {"audio_invalid_samples": 2}, "val": {}}
    assert record["samples"] == {"train": 4, "val": 6}
    accs = [h["val_accuracy"] for h in record["history"]]
    best = load_checkpoint(tmp_path / "out" / "best.pt")
    assert best["epoch"] == record["best_epoch"] == 1 + accs.index(max(accs))  # first best on val
    assert best["metrics"]["val_accuracy"] == max(accs) == res.best_score
    assert best["meta"] == {"task": "branch", "branch": "sa", "backbone": "resnet18", "num_classes": 28,
                            "input_size": 32}
    assert record["final_metrics"]["epoch"] == 2 and record["final_metrics"]["samples_per_s"] > 0


class _ToyTask:
    """A regression task: shows the TrainTask protocol is not tied to the branches."""

    def build_model(self) -> nn.Module:
        return nn.Linear(4, 1)

    def param_groups(self, model):
        return [{"params": [model.weight], "lr_mult": 1.0}, {"params": [model.bias], "lr_mult": 2.0}]

    def train_dataset(self):
        return _ToyData(32)

    def val_dataset(self):
        return _ToyData(16)

    def loss(self, model, batch, device):
        pred = model(batch["x"].to(device))[:, 0]
        return nn.functional.mse_loss(pred, batch["y"].to(device)), len(batch["y"])

    def validate(self, model, loader, device):
        errs = torch.cat([(model(b["x"])[:, 0] - b["y"]) ** 2 for b in loader])
        return {"val_loss": float(errs.mean()), "score": -float(errs.mean()), "mse": float(errs.mean())}

    def meta(self):
        return {"task": "toy"}


def test_generic_task_protocol(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=4, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.0, device="cpu", workers=0)
    metrics: list[EpochMetrics] = []
    res = fit(_ToyTask(), cfg, tmp_path, Callbacks(epoch_end=metrics.append))
    assert [m.epoch for m in metrics] == [1, 2, 3, 4]
    assert metrics[-1].val_loss < metrics[0].val_loss < metrics[0].train_loss
    assert metrics[0].val_accuracy is None and set(metrics[0].extra) == {"mse"}
    assert res.best_epoch == 1 + max(range(4), key=lambda i: -metrics[i].val_loss)
    assert load_checkpoint(res.best_checkpoint)["meta"] == {"task": "toy"}
    with pytest.raises(ValueError, match="different model"):
        class Other(_ToyTask):
            def meta(self):
                return {"task": "other"}
        fit(Other(), cfg, tmp_path)
