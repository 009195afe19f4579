"""End to end on the compose stack's parts: real PostgreSQL, real Redis, real `stapipe worker`
processes, a real ffmpeg-made synthetic dataset and the `tiny` preset (epochs cut by overrides).

The tests share one database and one worker (module scope) and run in file order: the first runs
the whole pipeline (with an injected failure and a re-run); later ones resubmit with a changed STA
config, so extraction → pseudo-GT are reused and only the STA stages run again — which is itself
the reuse-on-resubmission check.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from db.models import Artefact, EpochMetric, ExtractionItem, Pipeline, Stage
from db.session import session_scope
from sta_models.config import preset
from sta_models.evaluation_result import load_evaluation
from worker import orchestration as orch
from worker.stages import KINDS

from .conftest import (
    WorkerProcs,
    ensure_redis,
    fresh_pg_database,
    require_servers,
    restart_redis,
    stack_env,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

REDIS_DB = 11
FAULTS = "train_sa_coarse:1"


def tiny_config(sta_epochs: int = 2, **sta: Any) -> dict[str, Any]:
    cfg = preset("tiny").model_dump(mode="json")
    for b in ("s", "sa", "st"):
        cfg["coarse"][b]["epochs"] = 1
        cfg["fine"][b]["epochs"] = 1
    cfg["sta"]["epochs"] = sta_epochs
    cfg["sta"].update(sta)
    return cfg


class Stack:
    def __init__(self, url: str, home: Path, broker: str, workers: WorkerProcs, dataset: Path) -> None:
        self.url, self.home, self.broker, self.workers, self.dataset = url, home, broker, workers, dataset

    def submit(self, cfg: dict[str, Any], name: str) -> int:
        with session_scope(self.url) as s:
            return orch.submit_pipeline(s, name=name, dataset_root=self.dataset, config=cfg, submitted_by="test").id

    def stages(self, pid: int) -> dict[str, Stage]:
        with session_scope(self.url) as s:
            return {st.kind: st for st in s.scalars(select(Stage).where(Stage.pipeline_id == pid))}

    def pipeline(self, pid: int) -> Pipeline:
        with session_scope(self.url) as s:
            p = s.get(Pipeline, pid)
            assert p is not None
            return p

    def wait_final(self, pid: int, timeout: float = 300) -> str:
        def done() -> str | None:
            status = self.pipeline(pid).status
            return status if status in ("succeeded", "failed", "cancelled") else None

        status = None
        try:
            status = str(wait_until(done, timeout, 1.0, f"pipeline {pid} to finish"))
            return status
        finally:
            if status != "succeeded":  # context for a failing assertion
                print({k: (v.status, v.attempts, v.error_summary) for k, v in self.stages(pid).items()})
                print(self.workers.log("w1"))

    def epochs(self, stage_id: int) -> list[int]:
        with session_scope(self.url) as s:
            return list(s.scalars(select(EpochMetric.epoch).where(EpochMetric.stage_id == stage_id)
                                  .order_by(EpochMetric.epoch)))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Iterator[Stack]:
    require_servers(postgres=True, redis=True)
    import redis

    from db.migrate import upgrade
    from stapipe_settings import get_settings

    broker = f"redis://127.0.0.1:6379/{REDIS_DB}"
    redis.Redis.from_url(broker).flushdb()
    home = tmp_path_factory.mktemp("stack")
    saved = {k: os.environ.get(k) for k in ("STAPIPE_HOME", "STAPIPE_DATABASE_URL", "STAPIPE_BROKER_URL")}
    with fresh_pg_database("stapipe_e2e") as url:
        os.environ.update(STAPIPE_HOME=str(home), STAPIPE_DATABASE_URL=url, STAPIPE_BROKER_URL=broker)
        get_settings.cache_clear()
        upgrade(url)
        env = stack_env(home, url, broker, STAPIPE_FAULTS=FAULTS, STAPIPE_RECOVERY_INTERVAL_S="2")
        workers = WorkerProcs(env=env, log_dir=home / "worker-logs")
        try:
            workers.start("w1", concurrency=2)
            yield Stack(url, home, broker, workers, synth_root)
        finally:
            workers.stop_all()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            get_settings.cache_clear()
            ensure_redis()
            redis.Redis.from_url(broker).flushdb()


def test_full_pipeline_injected_failure_and_rerun(stack: Stack) -> None:
    pid = stack.submit(tiny_config(), "full")
    assert stack.wait_final(pid) == "failed"
    s = stack.stages(pid)
    sa = s["train_sa_coarse"]
    assert sa.status == "failed" and "injected fault" in sa.error_summary and "InjectedFault" in sa.traceback
    assert s["train_s_coarse"].status == s["train_st_coarse"].status == "succeeded"  # siblings went on
    assert s["cams_coarse"].status == "pending"
    upstream_finished = {k: s[k].finished_at for k in ("extract", "train_s_coarse", "train_st_coarse")}

    with session_scope(stack.url) as sess:
        assert [st.kind for st in orch.rerun_stage(sess, sa.id)][:2] == ["train_sa_coarse", "cams_coarse"]
    assert stack.wait_final(pid) == "succeeded"

    s = stack.stages(pid)
    assert all(st.status == "succeeded" for st in s.values())
    assert s["train_sa_coarse"].attempts == 2
    for kind, finished in upstream_finished.items():  # upstream not re-run
        assert s[kind].attempts == 1 and s[kind].finished_at == finished
    assert s["extract"].progress_done == s["extract"].progress_total == 12
    with session_scope(stack.url) as sess:
        items = sess.scalars(select(ExtractionItem).where(ExtractionItem.stage_id == s["extract"].id)).all()
        assert len(items) == 12 and all(i.status == "succeeded" and Path(i.output_path).is_file() for i in items)
        n_art = dict(sess.execute(select(Artefact.kind, func.count()).join(Stage).where(Stage.pipeline_id == pid)
                                  .group_by(Artefact.kind)).all())
        assert n_art["features"] == 12 and n_art["checkpoint"] == 7 and n_art["metrics"] == 2  # best.pt only (#16)
        art = sess.scalars(select(Artefact).where(Artefact.stage_id == s["train_sta"].id,
                                                  Artefact.path.like("%best.pt"))).one()
        assert art.size == Path(art.path).stat().st_size and len(art.sha256) == 64
    for kind in ("train_s_coarse", "train_sa_coarse", "train_st_coarse", "train_s_fine"):
        assert stack.epochs(s[kind].id) == [1]
    assert stack.epochs(s["train_sta"].id) == [1, 2]
    metrics = load_evaluation(Path(s["evaluate"].output_dir) / "metrics.json")
    assert [m.method for m in metrics.dataset] == ["sta", "centre"]
    assert s["evaluate"].summary["metrics"]["centre"]["cc"] is not None
    log = Path(s["train_sta"].log_path).read_text()
    assert "epoch 2" in log and "attempt 1" in log
    assert stack.pipeline(pid).status == "succeeded"


def _resubmit_sta(stack: Stack, name: str, **sta: Any) -> tuple[int, dict[str, Stage]]:
    pid = stack.submit(tiny_config(**sta), name)
    s = stack.stages(pid)
    reused = {k for k, st in s.items() if st.status == "reused"}
    assert reused == set(KINDS) - {"train_sta", "evaluate"}, reused
    return pid, s


def test_sigkill_during_training_resumes_from_checkpoint(stack: Stack) -> None:
    pid, s = _resubmit_sta(stack, "sigkill", sta_epochs=4, seed=1)
    sta_id = s["train_sta"].id
    wait_until(lambda: stack.epochs(sta_id), 120, 0.3, "STA epoch 1")
    stack.workers.kill("w1", signal.SIGKILL)  # the whole worker: parent and pool children
    killed_at = stack.epochs(sta_id)
    assert stack.stages(pid)["train_sta"].status == "running"  # nobody told the DB
    stack.workers.start("w1", concurrency=2)  # same hostname → startup recovery re-queues it
    assert stack.wait_final(pid) == "succeeded"
    st = stack.stages(pid)["train_sta"]
    assert st.attempts == 2 and st.worker_host == "w1@test"
    assert stack.epochs(sta_id) == [1, 2, 3, 4]  # each epoch exactly once
    record = json.loads((Path(st.output_dir) / "record.json").read_text())
    assert record["resumed_from_epoch"] >= killed_at[-1] >= 1
    assert "attempt 2" in Path(st.log_path).read_text()


def test_redis_restart_mid_pipeline_loses_no_stage(stack: Stack) -> None:
    pid, s = _resubmit_sta(stack, "redis-restart", sta_epochs=2, seed=2)
    try:
        restart_redis()  # the queued train_sta message (or the running one's ack) is gone
    finally:
        ensure_redis()
    assert stack.wait_final(pid, timeout=240) == "succeeded"
    st = stack.stages(pid)
    assert st["train_sta"].status == st["evaluate"].status == "succeeded"
    assert stack.epochs(st["train_sta"].id) == [1, 2]


def test_cancel_running_training_stops_at_batch_boundary(stack: Stack) -> None:
    pid, s = _resubmit_sta(stack, "cancel", sta_epochs=40, seed=3)
    sta_id = s["train_sta"].id
    wait_until(lambda: stack.stages(pid)["train_sta"].status == "running", 120, 0.3, "STA running")
    t0 = time.monotonic()
    with session_scope(stack.url) as sess:
        orch.cancel_pipeline(sess, pid)
    assert stack.wait_final(pid, timeout=60) == "cancelled"
    assert time.monotonic() - t0 < 30
    st = stack.stages(pid)
    assert st["train_sta"].status == "cancelled" and st["evaluate"].status == "cancelled"
    assert len(stack.epochs(sta_id)) < 40
    assert (Path(st["train_sta"].output_dir) / "last.pt").is_file()  # checkpoint saved on the way out
    assert "cancelled on request" in Path(st["train_sta"].log_path).read_text()
