"""worker.cpu_threads: busy pool children share torch's threads, in real forked processes (the
real worker is checked in tests/system/test_e2e_embedded.py, whose training logs name the share)."""

from __future__ import annotations

import multiprocessing
import os
import signal
from types import SimpleNamespace
from typing import Any

import pytest

from worker import cpu_threads


def test_each_busy_child_gets_an_equal_share_at_least_one() -> None:
    assert cpu_threads.threads_for(2, 1) == 2
    assert cpu_threads.threads_for(2, 2) == 1
    assert cpu_threads.threads_for(16, 4) == 4
    assert cpu_threads.threads_for(2, 4) == 1


def _child(name: str, go: Any, out: Any, steps: list[str]) -> None:
    import torch  # the child's torch, as a stage body imports it

    cpu_threads._busy()
    for step in steps:
        go.wait()
        go.clear()
        out.put((name, step, cpu_threads.rebalance(force=True), torch.get_num_threads()))


@pytest.fixture()
def slot_table() -> Any:
    cpu_threads._allocate_before_fork(sender=SimpleNamespace(concurrency=2))
    yield
    cpu_threads._table = None


def test_two_busy_children_split_the_threads_and_a_dead_ones_share_returns(slot_table: None) -> None:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    go_a, go_b = ctx.Event(), ctx.Event()
    a = ctx.Process(target=_child, args=("a", go_a, out, ["alone", "pair", "after"]))
    b = ctx.Process(target=_child, args=("b", go_b, out, ["pair", "never"]))
    a.start()
    go_a.set()
    _, _, alone, budget = out.get(timeout=60)
    assert alone == budget  # alone: torch's whole default
    b.start()
    go_b.set()
    assert out.get(timeout=60)[2] == max(1, budget // 2)
    go_a.set()
    assert out.get(timeout=60)[2:] == (max(1, budget // 2),) * 2
    os.kill(b.pid, signal.SIGKILL)  # killed mid-task: its slot stays marked, its PID is dead
    b.join()
    go_a.set()
    assert out.get(timeout=60)[2:] == (budget, budget)
    a.join(timeout=30)
    assert a.exitcode == 0


def test_a_worker_running_one_task_at_a_time_shares_nothing() -> None:
    cpu_threads._allocate_before_fork(sender=SimpleNamespace(concurrency=1))
    assert cpu_threads._table is None and cpu_threads.rebalance(force=True) is None
