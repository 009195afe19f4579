"""Checkpoint bytes of a ``tiny`` pipeline's seven training stages: kept after success, and the
peak while a stage runs, before and after weights were stored once per improving epoch (#16).

Each stage's real model (``tiny`` preset settings, random init) gets one real SGD step so the
optimiser holds its momentum buffers. Then the trainer's own :func:`commit_epoch` writes the
checkpoints of a run of epoch 0 + five epochs (improving, improving, not, improving, not: every
path of the protocol) into a stage folder, and the folder's bytes (each inode once: hard links are
one file) are measured before and after every link, rename and unlink — the peak is the largest.
*Before* is the same run through the protocol as it was before (``last.pt`` with its own weights
next to ``best.pt.pending``/``best.pt``, ``prev.pt`` a hard link of the old ``last.pt``).
Run: ``.venv/bin/python bench/bench_checkpoints.py``.
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sta_models import trainer
from sta_models.config import preset
from sta_models.networks.branches import build_branch, param_groups
from sta_models.networks.sta import STA, sta_param_groups
from sta_models.trainer import (
    CHECKPOINT_FORMAT,
    SeededSampler,
    _cpu_state,
    _rng_state,
    atomic_save,
    build_optimizer,
)

IMPROVES = (True, True, False, True, False)


def stage_models():
    cfg = preset("tiny")
    for phase in ("coarse", "fine"):
        for b in ("s", "sa", "st"):
            tc = getattr(cfg, phase)[b]
            m = build_branch(b, tc.backbone, use_cache=False)
            yield f"train_{b}_{phase}", m, param_groups(m), tc
    m = STA(cfg.sta.backbone, use_cache=False)
    yield "train_sta", m, sta_param_groups(m), cfg.sta


def commit_before(out_dir: Path, state: dict[str, Any], best_state: dict[str, Any] | None) -> None:
    """``commit_epoch`` as it was before weights were stored once (commit 9952c79)."""
    pending, last, prev = out_dir / trainer.PENDING, out_dir / trainer.LAST, out_dir / trainer.PREV
    if best_state is not None:
        atomic_save(best_state, pending)
    tmp_last = out_dir / f".{trainer.LAST}.next"
    atomic_save(state, tmp_last)
    if last.exists():
        link = out_dir / f".{trainer.PREV}.link"
        link.unlink(missing_ok=True)
        os.link(last, link)
        os.replace(link, prev)
    os.replace(tmp_last, last)
    if best_state is not None:
        os.replace(pending, out_dir / trainer.BEST)


def folder_bytes(d: Path) -> int:
    """Bytes of the files in ``d``, each inode once."""
    seen: dict[int, int] = {}
    for p in d.iterdir():
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        seen[st.st_ino] = st.st_size
    return sum(seen.values())


def run_peak(d: Path, commit: Callable[..., None], model: torch.nn.Module, opt: Any, sched: Any) -> tuple[int, int]:
    """(peak bytes of ``d`` during the run, peak of an improving epoch's commit right after another)."""
    real = {name: getattr(os, name) for name in ("replace", "link", "unlink")}
    peak = [0]

    def measured(name: str) -> Callable[..., Any]:
        def op(*args: Any, **kwargs: Any) -> Any:
            peak[0] = max(peak[0], folder_bytes(d))
            out = real[name](*args, **kwargs)
            peak[0] = max(peak[0], folder_bytes(d))
            return out
        return op

    d.mkdir()
    best: dict[str, Any] = {"score": None, "epoch": None}
    improving_peak = overall = 0
    try:
        for name in real:
            setattr(os, name, measured(name))
        for epoch, improved in enumerate((False, *IMPROVES)):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1e-3)  # new weights every epoch, as training makes them
            if improved:
                best = {"score": float(epoch), "epoch": epoch}
            state = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "meta": {}, "config": {}, "model": _cpu_state(model),
                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "sampler": SeededSampler(10, 0).state(), "rng": _rng_state(), "history": [], "best": best}
            weights = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "meta": {}, "config": {},
                       "model": state["model"], "metrics": {}, "best": best}
            peak[0] = 0
            commit(d, state, weights if improved else None)
            if improved and epoch >= 2 and IMPROVES[epoch - 2]:
                improving_peak = max(improving_peak, peak[0])
            overall = max(overall, peak[0])
    finally:
        for name, fn in real.items():
            setattr(os, name, fn)
    return overall, improving_peak


def main() -> None:
    rows, before, after = [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for kind, model, groups, tc in stage_models():
            opt, sched = build_optimizer(groups, tc)
            for p in model.parameters():  # one step: the momentum buffers exist, as in any real last.pt
                p.grad = torch.zeros_like(p)
            opt.step()
            old_peak, old_imp = run_peak(Path(tmp) / f"{kind}-before", commit_before, model, opt, sched)
            new_peak, new_imp = run_peak(Path(tmp) / f"{kind}-after", trainer.commit_epoch, model, opt, sched)
            d = Path(tmp) / f"{kind}-after"
            bb = (d / "best.pt").stat().st_size
            lb = os.path.getsize(Path(tmp) / f"{kind}-before" / "last.pt")
            rows.append((kind, bb, lb, old_peak, new_peak, old_imp, new_imp))
            before += lb + bb
            after += bb
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| stage | best.pt MB | last.pt MB (own weights) | peak while it runs, before → after MB "
          "| improving epoch after an improving one, before → after MB |")
    print("|---|---|---|---|---|")
    for kind, bb, lb, op, np_, oi, ni in rows:
        print(f"| {kind} | {bb / 1e6:.1f} | {lb / 1e6:.1f} | {op / 1e6:.1f} → {np_ / 1e6:.1f} "
              f"| {oi / 1e6:.1f} → {ni / 1e6:.1f} |")
    # one stage at a time: every other stage's best.pt + the running stage's own peak
    old = max(after - r[1] + r[3] for r in rows)
    new = max(after - r[1] + r[4] for r in rows)
    print(f"\nkept before #16 (last + best): {before / 1e6:.0f} MB; after success (best only): {after / 1e6:.0f} MB; "
          f"pipeline peak while one stage runs: before {old / 1e6:.0f} MB, after {new / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
