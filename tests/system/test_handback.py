"""Fast, safe stop (worker.handback) with real processes: PostgreSQL, Redis, `stapipe worker`.

SIGTERM goes to the worker's top process only, as `docker stop` does through tini (and `kill PID`
on a bare host): the running training must stop at its next batch boundary, go back to the queue
(not cancelled, not failed, the attempt not counted) and the worker must exit within seconds;
a second worker then resumes the stage from its checkpoint and records every epoch once.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.migrate import upgrade
from db.models import EpochMetric, Stage
from db.session import session_scope
from sta_models.config import preset
from worker import orchestration as orch

from .conftest import fresh_pg_database, require_servers, stack_env, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

REDIS_DB = 14
EPOCHS = 6
TRAIN_KINDS = ("train_s_coarse", "train_sa_coarse", "train_st_coarse")


def _config() -> dict[str, Any]:
    cfg = preset("tiny").model_dump(mode="json")
    for b in ("s", "sa", "st"):
        cfg["coarse"][b]["epochs"] = EPOCHS
        cfg["fine"][b]["epochs"] = 1
    cfg["sta"]["epochs"] = 1
    return cfg


def _stages(url: str, pid: int) -> dict[str, Stage]:
    with session_scope(url) as s:
        return {st.kind: st for st in s.scalars(select(Stage).where(Stage.pipeline_id == pid))}


def _epochs(url: str, stage_id: int) -> list[int]:
    with session_scope(url) as s:
        return list(s.scalars(select(EpochMetric.epoch).where(EpochMetric.stage_id == stage_id)
                              .order_by(EpochMetric.epoch)))


def _mid_epoch(url: str, pid: int) -> Stage | None:
    """A training stage inside epoch 2 or later with batches of that epoch still to run."""
    for kind in TRAIN_KINDS:
        st = _stages(url, pid)[kind]
        what = st.progress_what or ""
        if (st.status == "running" and what.startswith("epoch ") and int(what.split()[1]) >= 2
                and 0 < st.progress_done < st.progress_total):
            return st
    return None


def test_sigterm_mid_epoch_hands_the_stage_back_and_it_resumes_elsewhere(
    tmp_path: Path, synth_root: Path, worker_procs_factory: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_servers(postgres=True, redis=True)
    import redis

    from stapipe_settings import get_settings

    broker = f"redis://127.0.0.1:6379/{REDIS_DB}"
    redis.Redis.from_url(broker).flushdb()
    home = tmp_path / "home"
    with fresh_pg_database("stapipe_handback") as url:
        upgrade(url)
        # this process submits (and so sends to the broker) like the dashboard would
        monkeypatch.setenv("STAPIPE_HOME", str(home))
        monkeypatch.setenv("STAPIPE_DATABASE_URL", url)
        monkeypatch.setenv("STAPIPE_BROKER_URL", broker)
        get_settings.cache_clear()
        workers = worker_procs_factory(stack_env(home, url, broker, STAPIPE_RECOVERY_INTERVAL_S="2"))
        w1 = workers.start("w1", concurrency=1)
        with session_scope(url) as s:
            pid = orch.submit_pipeline(s, name="handback", dataset_root=synth_root, config=_config(),
                                       submitted_by="test").id
        try:
            stage = wait_until(lambda: _mid_epoch(url, pid), 300, 0.2, "a training stage in mid-epoch")
            assert isinstance(stage, Stage)
            before = _epochs(url, stage.id)
            counted = stage.attempts - stage.attempts_base

            t0 = time.monotonic()
            w1.send_signal(signal.SIGTERM)  # the top process only, like tini in a container
            rc = w1.wait(timeout=60)
            stop_s = time.monotonic() - t0
            workers.procs.pop("w1")
            print(f"worker stopped {stop_s:.1f} s after SIGTERM, mid-epoch of {stage.kind}")
            assert rc == 0, workers.log("w1")
            assert stop_s < 20, f"the worker took {stop_s:.1f} s to stop"

            back = _stages(url, pid)[stage.kind]
            assert back.status == "queued", (back.status, back.error_summary, workers.log("w1"))
            assert back.celery_task_id != stage.celery_task_id and back.error_summary is None
            assert back.attempts - back.attempts_base == counted - 1  # the handed-back attempt is not counted
            assert not back.cancel_requested
            assert (Path(back.output_dir) / "last.pt").is_file()
            log = Path(back.log_path).read_text()
            assert "handed back to the queue" in log and "FAILED" not in log
            kept = _epochs(url, stage.id)
            assert kept[: len(before)] == before and len(kept) < EPOCHS

            workers.start("w2", concurrency=1)  # "elsewhere": another worker with another name
            wait_until(lambda: _stages(url, pid)[stage.kind].status == "succeeded", 300, 0.5,
                       f"{stage.kind} to finish on w2")
            done = _stages(url, pid)[stage.kind]
            assert done.worker_host == "w2@test"
            assert _epochs(url, stage.id) == list(range(1, EPOCHS + 1))  # each epoch exactly once
            record = json.loads((Path(done.output_dir) / "record.json").read_text())
            assert record["resumed_from_epoch"] == kept[-1] >= 1
            assert f"resuming after epoch {kept[-1]}" in Path(done.log_path).read_text()
        finally:
            with session_scope(url) as s:
                orch.cancel_pipeline(s, pid)
            workers.stop_all()
            redis.Redis.from_url(broker).flushdb()
            get_settings.cache_clear()
