"""Celery app configuration and the parent-process import rule (CUDA safety with fork)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT


def test_worker_parent_never_imports_torch() -> None:
    code = ("import sys, worker.celery_app, worker.tasks, worker.maintenance, worker.commands; "
            "print('torch' in sys.modules, 'sta_models.training' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_long_task_settings(home) -> None:
    from stapipe_settings import Settings
    from worker.celery_app import make_app

    s = Settings(broker_url="redis://127.0.0.1:6379/0", task_time_limit_s=3600)
    conf = make_app(s).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.task_ignore_result
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_pool == "prefork"
    assert conf.broker_transport_options["visibility_timeout"] == 7200 > conf.task_time_limit == 3600
    assert conf.visibility_timeout == 7200 and conf.result_backend_transport_options["visibility_timeout"] == 7200
    embedded = make_app(Settings(home=home)).conf
    assert embedded.broker_url == "filesystem://localhost//"
    assert embedded.broker_transport_options["store_processed"] is True


def test_faults_parse() -> None:
    from worker.faults import parse

    assert parse("train_sa_coarse:1, extract:vid:2, train_s_coarse:30:slow") == {
        "train_sa_coarse": (1, "raise"), "extract:vid": (2, "raise"), "train_s_coarse": (30, "slow")}


def test_message_exists_finds_waiting_and_prioritised_messages_in_redis(home, monkeypatch) -> None:  # noqa: ANN001
    """Sent through the real Celery producer to a real Redis: found by reading the queue's own lists
    (every priority step) and the unacked hash, never by a keyspace scan (a fresh queue name per run)."""
    import uuid

    import redis

    from stapipe_settings import Settings
    from tests.conftest import REDIS_BASE, require_servers
    from worker.celery_app import TASK_STAGE, make_app, message_exists

    require_servers(postgres=False, redis=True)
    settings = Settings(broker_url=f"{REDIS_BASE}/0")
    queue = f"test-exists-{uuid.uuid4().hex[:12]}"
    plain, urgent = uuid.uuid4().hex, uuid.uuid4().hex
    app = make_app(settings)

    def no_scan(*_: object, **__: object) -> None:
        raise AssertionError("message_exists scanned the keyspace")

    try:
        app.send_task(TASK_STAGE, args=[1], queue=queue, task_id=plain, ignore_result=True)
        app.send_task(TASK_STAGE, args=[2], queue=queue, task_id=urgent, ignore_result=True, priority=9)
        for name in ("keys", "scan", "scan_iter"):
            monkeypatch.setattr(redis.Redis, name, no_scan)
        exists = message_exists(settings)
        assert exists(queue, plain) and exists(queue, urgent)
        assert not exists(queue, uuid.uuid4().hex) and not exists(f"{queue}-other", plain)
    finally:
        monkeypatch.undo()
        redis.Redis.from_url(settings.broker).delete(queue, *(f"{queue}\x06\x16{step}" for step in (3, 6, 9)))
        app.close()


@pytest.mark.parametrize("broker_url", [None, "filesystem://"])
def test_embedded_broker_sends_without_kombu_hostname_warning(tmp_path: Path, broker_url: str | None) -> None:
    """A real send on the filesystem broker, logging on as in ``stapipe run``: the message lands in
    the queue folder and kombu prints no "No hostname was supplied" (a bare URL is given a host)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAPIPE_")}
    env.update(STAPIPE_HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    if broker_url:
        env["STAPIPE_BROKER_URL"] = broker_url
    code = ("import logging; logging.basicConfig(level=logging.INFO); "
            "from worker.celery_app import send; send('stage', 1, 'cpu', 'token-1')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    (msg,) = (tmp_path / "broker" / "queue").iterdir()
    assert msg.name.endswith(".cpu.msg") and "token-1" in msg.read_text()
    assert "No hostname" not in out.stdout + out.stderr, out.stderr
