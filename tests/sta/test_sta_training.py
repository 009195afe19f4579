"""train_sta on tiny hand-written files: checkpoints, record, val saliency metrics, resume, cancel."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from sta_helpers import tiny_config

from sta_models.callbacks import Callbacks, Cancelled
from sta_models.sta_training import fixation_map, load_sta, train_sta
from sta_models.trainer import load_checkpoint


def test_checkpoints_record_and_epoch_metrics(trained_sta) -> None:
    result, out, seen = trained_sta
    for name in ("last.pt", "best.pt", "record.json"):
        assert (out / name).is_file()
    assert [m.epoch for m in seen] == [1, 2]
    for m in seen:
        assert {"cc", "nss", "sim", "kld"} <= set(m.extra)
        assert all(math.isfinite(m.extra[k]) for k in ("cc", "nss", "sim", "kld"))
        assert -1.0 <= m.extra["cc"] <= 1.0 and 0.0 <= m.extra["sim"] <= 1.0 and m.extra["kld"] >= 0.0
        assert m.val_loss is not None and math.isfinite(m.val_loss) and math.isfinite(m.train_loss)
    best = max(seen, key=lambda m: m.extra["cc"])
    assert result.best_epoch == best.epoch
    assert load_checkpoint(out / "best.pt")["epoch"] == best.epoch
    record = json.loads((out / "record.json").read_text())
    assert record["samples"] == {"train": 8, "val": 3}
    assert record["excluded"]["val"] == {"event_seconds_without_pseudo_gt": 1, "neighbours_replaced_by_centre": 2}
    assert record["best_epoch"] == best.epoch and record["epochs_done"] == 2
    assert record["weights"] == {"backbone": "random init", "audio": "random init"}
    assert record["meta"] == {"task": "sta", "model": "sta", "backbone": "resnet18", "channels": 8,
                              "input_size": 64, "frame_size": 48}


def test_checkpoint_rebuilds_the_model(trained_sta) -> None:
    _, out, _ = trained_sta
    model, meta = load_sta(out / "best.pt")
    assert meta["input_size"] == 64 and meta["backbone"] == "resnet18" and meta["channels"] == 8
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 3, 64, 64), torch.zeros(1, 3, 1, 81, 199))
    assert logits.shape == (1, 3, 3, 64, 64)


def test_resume_after_epoch_one_gives_the_same_run(trained_sta, tiny_data, tmp_path: Path) -> None:
    full, full_out, _ = trained_sta
    feats, gts, splits = tiny_data
    train_sta(splits, feats, gts, tmp_path, tiny_config(epochs=1), channels=8, use_cache=False)
    seen: list = []
    resumed = train_sta(splits, feats, gts, tmp_path, tiny_config(epochs=2), Callbacks(epoch_end=seen.append),
                        channels=8, use_cache=False)
    assert resumed.resumed_from == 1 and [m.epoch for m in seen] == [2]  # epoch 1 is not re-emitted
    strip = [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_s")} for h in full.history]
    again = [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_s")} for h in resumed.history]
    assert again == strip
    a, b = load_checkpoint(full_out / "last.pt")["model"], load_checkpoint(tmp_path / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_random_init_sta_trains_with_clipped_gradients(trained_sta, tiny_data, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """From random init STA uses ``scratch-sta-v1``: SPEC steps, precise BatchNorm statistics and
    the gradient norm clipped at 5 on every step (its loss ran to NaN unclipped; method-notes)."""
    from sta_models.scratch import STA_RECIPE

    result, _, _ = trained_sta
    assert result.record["recipe"] == STA_RECIPE.record()
    assert STA_RECIPE.clip_norm == 5.0 and not STA_RECIPE.he_init and STA_RECIPE.lr_scale == 1.0
    clipped: list[tuple[float, float]] = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):  # the real clipping runs; the spy records its norms
        params = list(params)
        total = real_clip(params, max_norm, *args, **kwargs)
        after = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        clipped.append((float(max_norm), float(after)))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    feats, gts, splits = tiny_data
    train_sta(splits, feats, gts, tmp_path, tiny_config(epochs=1), channels=8, use_cache=False)
    assert len(clipped) == 2  # 8 samples, batch 4: every step clipped
    assert all(max_norm == 5.0 and after <= 5.0 + 1e-3 for max_norm, after in clipped), clipped


def test_cancel_leaves_a_consistent_checkpoint(tiny_data, tmp_path: Path) -> None:
    feats, gts, splits = tiny_data
    with pytest.raises(Cancelled):
        train_sta(splits, feats, gts, tmp_path, tiny_config(epochs=2),
                  Callbacks(cancel_requested=lambda: True), channels=8, use_cache=False)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 0


def test_nss_fixations_are_the_above_mean_region() -> None:
    g = torch.zeros(6, 6).numpy()
    g[1:3, 1:3] = 1.0
    g[4, 4] = 0.1  # below the mean (≈ 0.114): not a fixation
    assert fixation_map(g).sum() == 4
