"""Workers keep their own rows (worker.presence): a real ``stapipe worker`` appears with its queues
and device, disappears on a clean stop; a queue nobody consumes is reported to whoever waits on it."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, stack_env, wait_until


def _rows(url: str) -> list:
    from db.session import session_scope
    from worker.registry import workers

    with session_scope(url) as s:
        return workers(s)


@pytest.mark.slow
def test_a_real_worker_registers_and_leaves(home: Path, worker_procs_factory) -> None:  # type: ignore[no-untyped-def]
    from db.migrate import upgrade
    from stapipe_settings import get_settings

    url = get_settings().db_url
    upgrade(url)
    procs = worker_procs_factory(stack_env(home, None, None))
    procs.start("w1", queues="cpu", concurrency=1)
    rows = wait_until(lambda: _rows(url), 90, what="the worker's row\n" + procs.log("w1"))
    (w,) = rows  # type: ignore[misc]
    assert (w.name, w.queues, w.online, w.concurrency) == ("w1@test", ["cpu"], True, 1)
    assert w.device.startswith("cpu") and w.current_stages == []
    procs.kill("w1", signal.SIGTERM)  # warm shutdown deletes the row
    wait_until(lambda: not _rows(url), 30, what="the row to go on shutdown")


def test_stale_rows_are_offline_and_a_restart_takes_the_row_over(home: Path) -> None:
    from datetime import timedelta

    from db.migrate import upgrade
    from db.models import Worker, utcnow
    from db.session import session_scope
    from stapipe_settings import get_settings
    from worker.registry import ONLINE_S, queues_served, register, workers

    url = get_settings().db_url
    upgrade(url)
    with session_scope(url) as s:
        register(s, name="g@h", host="h", queues=["gpu"], device="cuda: X", pid=1, concurrency=1)
        s.get(Worker, 1).last_heartbeat = utcnow() - timedelta(seconds=ONLINE_S + 1)
    with session_scope(url) as s:
        assert queues_served(s) == set() and [w.online for w in workers(s, include_offline=True)] == [False]
        register(s, name="g@h", host="h", queues=["gpu"], device="cuda: X", pid=2, concurrency=1)
    with session_scope(url) as s:
        assert queues_served(s) == {"gpu"} and [w.pid for w in workers(s)] == [2]


def test_follow_says_when_no_worker_consumes_the_queue(home: Path, synth_root: Path) -> None:
    from db.migrate import upgrade
    from db.session import session_scope
    from stapipe_settings import get_settings
    from worker.follow import UnservedWatch, snapshot
    from worker.orchestration import submit_pipeline
    from worker.registry import register

    url = get_settings().db_url
    upgrade(url)
    from sta_models.config import preset

    with session_scope(url) as s:
        pid = submit_pipeline(s, name="x", dataset_root=synth_root, config=preset("tiny")).id
    watch = UnservedWatch(url, after_s=0)
    lines = watch.check(snapshot(url, pid))
    assert lines == ["waiting: no worker is online for queue 'cpu': start one with `stapipe worker --queues cpu` "
                     "(or `stapipe up`) pointed at the same database and broker"]
    assert watch.check(snapshot(url, pid)) == []  # said once
    with session_scope(url) as s:
        register(s, name="c@h", host="h", queues=["cpu"], device="cpu", pid=1, concurrency=1)
    assert watch.check(snapshot(url, pid)) == ["a worker for queue 'cpu' is online now"]


@pytest.mark.slow
def test_stapipe_run_starts_a_worker_on_the_embedded_default(home: Path, synth_root: Path) -> None:
    """No worker running: ``stapipe run`` says it starts one, and that worker picks the stages up.
    (Stopped once extraction has started: the whole pipeline is covered by the end-to-end tests.)"""
    data = synth_root
    env = stack_env(home, None, None)
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "run", "--dataset", str(data), "--preset", "tiny"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out = io.StringIO()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if "extract" in line and "running" in line or "succeeded" in line:
                break
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    text = out.getvalue()
    assert "no worker is online on the embedded default: starting one for this run" in text, text
    assert "waiting: no worker" not in text, text
