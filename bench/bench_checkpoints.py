"""Checkpoint bytes of a ``tiny`` pipeline's seven training stages, before and after #16.

Each stage's real model (``tiny`` preset settings, random init) gets one real SGD step so the
optimiser holds its momentum buffers, then the trainer's own snapshot functions write what a
stage leaves on disk: *before* = ``last.pt`` (weights + optimiser + RNG + sampler) and ``best.pt``
kept forever; *while running* now = ``last.pt`` + ``prev.pt`` + ``best.pt``; *after success* now
= ``best.pt`` (weights only). Run: ``.venv/bin/python bench/bench_checkpoints.py``.
"""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path

import torch

from sta_models.config import preset
from sta_models.networks.branches import build_branch, param_groups
from sta_models.networks.sta import STA, sta_param_groups
from sta_models.trainer import SeededSampler, _cpu_state, _rng_state, atomic_save, build_optimizer


def stage_models():
    cfg = preset("tiny")
    for phase in ("coarse", "fine"):
        for b in ("s", "sa", "st"):
            tc = getattr(cfg, phase)[b]
            m = build_branch(b, tc.backbone, use_cache=False)
            yield f"train_{b}_{phase}", m, param_groups(m), tc
    m = STA(cfg.sta.backbone, use_cache=False)
    yield "train_sta", m, sta_param_groups(m), cfg.sta


def main() -> None:
    rows, before, after = [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for kind, model, groups, tc in stage_models():
            opt, sched = build_optimizer(groups, tc)
            for p in model.parameters():  # one step: the momentum buffers exist, as in any real last.pt
                p.grad = torch.zeros_like(p)
            opt.step()
            weights = _cpu_state(model)
            last = {"model": weights, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "sampler": SeededSampler(10, 0).state(), "rng": _rng_state(), "history": [], "best": {}}
            best = {"model": weights, "metrics": {}, "best": {}}
            atomic_save(last, Path(tmp) / f"{kind}-last.pt")
            atomic_save(best, Path(tmp) / f"{kind}-best.pt")
            lb, bb = (Path(tmp) / f"{kind}-last.pt").stat().st_size, (Path(tmp) / f"{kind}-best.pt").stat().st_size
            rows.append((kind, bb, lb))
            before += lb + bb
            after += bb
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| stage | best.pt MB | last.pt MB |\n|---|---|---|")
    for kind, bb, lb in rows:
        print(f"| {kind} | {bb / 1e6:.1f} | {lb / 1e6:.1f} |")
    peak = after + max(2 * lb for _, _, lb in rows)  # every best.pt + the largest running stage's last + prev
    print(f"\nbefore (last + best kept): {before / 1e6:.0f} MB; after success now (best only): {after / 1e6:.0f} MB; "
          f"peak while one stage runs now (its last + prev on top): {peak / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
