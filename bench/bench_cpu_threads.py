"""Two trainings side by side on one worker: torch's default threads vs the CPUs shared out.

A worker with ``-c 2`` runs two stages at once in two pool children (the demo's SA and ST beside
each other). Each child's torch starts one thread per core unless told otherwise; on 2 cores that
is 4 busy threads. ``worker.cpu_threads`` gives each of the busy children its share
(``threads_for(budget, busy)``). This runs the same pair of trainings, SA and ST at the ``demo``
preset's coarse size and batch (96 px, 16), in two fresh processes at once, first with torch's
default and then with that share (``OMP_NUM_THREADS``), alternating for ``--rounds``; the ratio
of the pair's wall times is the speed-up.

Run: ``.venv/bin/python bench/bench_cpu_threads.py [--steps 12] [--rounds 2]`` (~3 min on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.cpu_threads import threads_for  # noqa: E402

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

PAIR = ("sa", "st")


def child(net: str, steps: int) -> None:
    """One training: ``steps`` SGD steps of ``net`` at the demo's coarse size; prints its seconds."""
    import torch

    from bench.timing import step_times, synthetic_batch
    from sta_models.config import preset
    from sta_models.networks import build_branch, param_groups
    from sta_models.trainer import build_optimizer

    cfg = preset("demo").coarse[net]
    torch.manual_seed(0)
    model = build_branch(net, cfg.backbone)
    opt, _ = build_optimizer(param_groups(model), cfg)
    x = synthetic_batch(net, cfg.input_size, cfg.batch_size, torch.device("cpu"))
    times = step_times(net, model, opt, x, torch.device("cpu"), steps)
    print(f"{net} threads={torch.get_num_threads()} seconds={sum(times):.2f}", flush=True)


def pair_wall(env: dict[str, str], steps: int) -> tuple[float, list[str]]:
    """Both trainings started at once in fresh interpreters; wall seconds until both ended."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--child", net, "--steps", str(steps)],
                              env=env, stdout=subprocess.PIPE, text=True) for net in PAIR]
    lines = [p.communicate()[0].strip() for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a training failed: {lines}")
    return time.perf_counter() - t0, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", choices=PAIR)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.steps)
        return
    default = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    cpus = len(os.sched_getaffinity(0))
    threads = threads_for(cpus, len(PAIR))
    shared = {**default, **{v: str(threads) for v in THREAD_VARIABLES}}
    print(f"{cpus} CPUs, {len(PAIR)} trainings at once; shared: {threads} thread(s) each")
    walls: dict[str, list[float]] = {"default": [], "shared": []}
    for r in range(args.rounds):
        for name, env in (("default", default), ("shared", shared)):
            wall, lines = pair_wall(env, args.steps)
            walls[name].append(wall)
            print(f"round {r + 1} {name:8s} pair {wall:6.1f} s   " + "   ".join(lines), flush=True)
    best = {k: min(v) for k, v in walls.items()}
    print(f"best pair wall: default {best['default']:.1f} s, shared {best['shared']:.1f} s, "
          f"speed-up {best['default'] / best['shared']:.2f}x")


if __name__ == "__main__":
    main()
