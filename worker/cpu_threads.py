"""CPU threads per pool child: the worker's CPU threads shared among the stages running right now.

Why: each prefork child that trains imports torch, and torch starts one OpenMP/MKL thread per
core. A worker with ``-c 2`` on 2 cores then runs 4 busy threads on 2 cores; OpenMP's threads
spin at every barrier, and two trainings side by side each ran ~2.4× slower than with 1 thread
apiece (bench/RESULTS.md, "CPU threads per pool child"). A fixed share (``cpus // concurrency``)
would fix that but leave a core idle whenever a stage runs alone (STA at the end of every
pipeline: 257 s at 1 thread against 146 s at 2). So the share follows the load: each child marks
itself busy in a slot table the main process allocates before the pool forks (shared memory),
and at the stage's start and then at most every :data:`REBALANCE_S` at a batch boundary (the
cancel check) it sets ``torch.set_num_threads(budget // busy)``, ``budget`` being torch's own
default in that child (which ``OMP_NUM_THREADS`` sets, when the user wants a fixed number).
A child killed mid-task leaves its slot behind; dead PIDs are not counted.

The main process never imports torch, and a child that has not imported torch is left alone.
A worker running one task at a time (GPU workers, ``-c 1``) has no slot table: nothing changes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from celery import signals

REBALANCE_S = 1.0
_SLOTS = 64  # more than any worker's concurrency; a child that finds no free slot is not counted

_table: Any = None  # multiprocessing.Array of busy children's PIDs (0 = free), inherited by fork
_budget: int | None = None  # torch's default thread count in this child, read before we change it
_last = 0.0


def threads_for(budget: int, busy: int) -> int:
    """Each busy child gets an equal share of ``budget`` threads, at least one."""
    return max(1, budget // max(1, busy))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def busy_children() -> int:
    """How many of this worker's pool children run a task now (this one included)."""
    if _table is None:
        return 1
    with _table.get_lock():
        pids = [p for p in _table if p]
    return max(1, sum(_alive(p) for p in pids))


def _mark(busy: bool) -> None:
    if _table is None:
        return
    me = os.getpid()
    with _table.get_lock():
        for i, pid in enumerate(_table):
            if busy and (pid == 0 or not _alive(pid)):
                _table[i] = me
                return
            if not busy and pid == me:
                _table[i] = 0


def rebalance(log: Callable[[str], None] | None = None, *, force: bool = False) -> int | None:
    """Set this child's torch threads to its share now; the count, or ``None`` when torch is not
    in use here (or nothing is shared). Cheap enough for every batch: it acts every REBALANCE_S."""
    global _budget, _last
    torch = sys.modules.get("torch")
    if _table is None or torch is None:
        return None
    now = time.monotonic()
    if not force and now - _last < REBALANCE_S:
        return None
    _last = now
    if _budget is None:
        _budget = int(torch.get_num_threads())
    busy = busy_children()
    want = threads_for(_budget, busy)
    if want != torch.get_num_threads():
        torch.set_num_threads(want)
        if log is not None:
            log(f"CPU threads: {want} of {_budget} ({busy} task{'' if busy == 1 else 's'} running on this worker)")
    return want


@signals.worker_init.connect
def _allocate_before_fork(sender: Any = None, **_: Any) -> None:
    """In the main process, before the pool forks (``sender`` is the WorkController)."""
    global _table
    concurrency = getattr(sender, "concurrency", None)
    if isinstance(concurrency, int) and concurrency > 1:
        _table = multiprocessing.get_context("fork").Array("i", _SLOTS)


@signals.task_prerun.connect
def _busy(**_: Any) -> None:
    _mark(True)


@signals.task_postrun.connect
def _idle(**_: Any) -> None:
    with contextlib.suppress(Exception):
        _mark(False)
