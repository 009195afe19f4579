"""Celery app configuration and the parent-process import rule (CUDA safety with fork)."""

from __future__ import annotations

import subprocess
import sys

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
    assert embedded.broker_url == "filesystem://"
    assert embedded.broker_transport_options["store_processed"] is True


def test_faults_parse() -> None:
    from worker.faults import parse

    assert parse("train_sa_coarse:1, extract:vid:2, train_s_coarse:30:slow") == {
        "train_sa_coarse": (1, "raise"), "extract:vid": (2, "raise"), "train_s_coarse": (30, "slow")}
