"""Transient database errors never fail a stage (issue #14, item 1), against real PostgreSQL.

The faults are real: ``pg_terminate_backend`` on every connection to the test's own database, and
``ALTER DATABASE … ALLOW_CONNECTIONS false`` for an outage (never another database).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from db.migrate import upgrade
from db.models import EpochMetric, Stage, StageStatus
from db.session import session_scope
from db.transient import DatabaseUnavailable, is_transient, retry
from sta_models.callbacks import EpochMetrics
from sta_models.config import preset
from worker import orchestration as orch
from worker.stage_context import StageContext
from worker.stage_graph import Queue, StageSpec
from worker.stage_runner import claim_stage, execute_stage

from .conftest import PG_ADMIN_URL

pytestmark = pytest.mark.postgres


class Terminator:
    """Kills every connection to one database every ``interval`` s (the admin link is elsewhere)."""

    def __init__(self, url: str, interval: float = 0.2) -> None:
        self.db = make_url(url).database
        self.interval, self.killed = interval, 0
        self.admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def kill_once(self) -> int:
        with self.admin.connect() as c:
            n = c.execute(text("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": self.db}).scalar()
        self.killed += int(n or 0)
        return int(n or 0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.kill_once()

    def allow_connections(self, allow: bool) -> None:
        with self.admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{self.db}" ALLOW_CONNECTIONS {str(allow).lower()}'))
        if not allow:
            self.kill_once()

    def __enter__(self) -> Terminator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.admin.dispose()


@pytest.fixture
def db(home: Path, pg_url: str, tmp_path: Path, dispatched) -> Iterator[tuple[str, Path]]:  # noqa: ANN001
    upgrade(pg_url)
    root = tmp_path / "ds"
    (root / "AVE").mkdir(parents=True)
    (root / "Annotations.txt").write_text("Category&VideoID&Quality&StartTime&EndTime\n")
    yield pg_url, root


def _queued_stage(url: str, dataset: Path) -> tuple[int, str]:
    with session_scope(url) as s:
        p = orch.submit_pipeline(s, name="faults", dataset_root=dataset, config=preset("tiny").model_dump(mode="json"),
                                 submitted_by="test")
        st = s.scalars(select(Stage).where(Stage.pipeline_id == p.id, Stage.kind == "extract")).one()
        return st.id, str(st.celery_task_id)


def _epochs(url: str, stage_id: int) -> list[int]:
    with session_scope(url) as s:
        return list(s.scalars(select(EpochMetric.epoch).where(EpochMetric.stage_id == stage_id)
                              .order_by(EpochMetric.epoch)))


def _metrics(epoch: int) -> EpochMetrics:
    return EpochMetrics(epoch=epoch, train_loss=1.0 / epoch, val_loss=None, val_accuracy=None, lr=0.01,
                        seconds=0.1, samples_per_s=100.0)


def test_transient_classification_and_retry_budget(db: tuple[str, Path]) -> None:
    url, _ = db
    with Terminator(url) as term:
        engine = create_engine(url)
        conn = engine.connect()
        conn.execute(text("SELECT 1"))
        term.kill_once()
        with pytest.raises(Exception) as info:
            conn.execute(text("SELECT 1"))
        assert is_transient(info.value)  # AdminShutdown / connection closed
        conn.close()
        with engine.connect() as c2, pytest.raises(Exception) as bad:
            c2.execute(text("SELECT * FROM no_such_table"))
        assert not is_transient(bad.value)  # a real bug is never retried
        engine.dispose()

        calls: list[int] = []

        def flaky() -> str:
            calls.append(1)
            if len(calls) < 3:
                with session_scope(url) as s:
                    s.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
            with session_scope(url) as s:
                return str(s.execute(text("SELECT 'ok'")).scalar())

        assert retry(flaky, "testing", budget_s=10) == "ok" and len(calls) >= 3
        term.allow_connections(False)
        try:
            t0 = time.monotonic()
            with pytest.raises(DatabaseUnavailable, match=r"database unavailable for 1 s while testing"):
                retry(flaky, "testing", budget_s=1)
            assert time.monotonic() - t0 < 5
        finally:
            term.allow_connections(True)


def test_stage_survives_terminated_connections(db: tuple[str, Path], synth_features: Path) -> None:
    """Every stage-side write of a running stage is hit by killed connections: it still succeeds,
    each epoch recorded once; the HDF5 handles the body opened are closed when the task ends."""
    from sta_models import datasets as D

    url, dataset = db
    stage_id, token = _queued_stage(url, dataset)
    feature = sorted(synth_features.glob("*.h5"))[0]

    def body(ctx: StageContext) -> None:
        cb = ctx.callbacks
        D.open_h5(feature)
        for epoch in range(1, 6):
            for batch in range(20):
                cb.check_cancel()
                cb.on_progress(batch + 1, 20, f"epoch {epoch}")
                time.sleep(0.03)
            cb.on_epoch(_metrics(epoch))

    with Terminator(url, interval=0.15) as term:
        outcome = execute_stage(url, stage_id, token, "w@test", 3, StageSpec("extract", Queue.CPU, body=body), outage_s=30)
    assert term.killed >= 5, term.killed  # the faults really hit the stage's connections
    assert outcome == "succeeded"
    assert _epochs(url, stage_id) == [1, 2, 3, 4, 5]
    with session_scope(url) as s:
        st = s.get(Stage, stage_id)
        assert st.status == StageStatus.SUCCEEDED and st.attempts == 1 and st.error_summary is None
    assert D.open_handles() == 0


def test_long_outage_hands_the_stage_back(db: tuple[str, Path], dispatched) -> None:  # noqa: ANN001
    """Longer than ``outage_s``: the attempt stops at a batch boundary, the epoch written during the
    outage is kept and written later, and the stage goes back to the queue as an attempt."""
    url, dataset = db
    stage_id, token = _queued_stage(url, dataset)
    term = Terminator(url)
    back = threading.Timer(4.0, term.allow_connections, (True,))

    def body(ctx: StageContext) -> None:
        cb = ctx.callbacks
        cb.on_epoch(_metrics(1))
        term.allow_connections(False)
        back.start()  # back after 4 s: the attempt ends at 2.5 s, the hand-back retries until 5 s
        cb.on_epoch(_metrics(2))  # during the outage: kept, not raised
        for _ in range(400):
            cb.check_cancel()  # raises DatabaseUnavailable once the outage is older than outage_s
            time.sleep(0.05)
        raise AssertionError("the outage never ended the attempt")

    try:
        t0 = time.monotonic()
        outcome = execute_stage(url, stage_id, token, "w@test", 3, StageSpec("extract", Queue.CPU, body=body),
                                outage_s=2.5)
    finally:
        back.cancel()
        back.join()
        term.allow_connections(True)
        term.admin.dispose()
    assert outcome == "handed back" and time.monotonic() - t0 < 20
    with session_scope(url) as s:
        st = s.get(Stage, stage_id)
        assert st.status == StageStatus.QUEUED and st.attempts == 1 and st.celery_task_id != token
        assert st.error_summary.startswith("handed back after a database outage")
        new_token = st.celery_task_id
        log = Path(st.log_path).read_text()
    assert dispatched.messages[-1] == ("stage", stage_id, "cpu", new_token)
    assert _epochs(url, stage_id) == [1, 2]  # the epoch of the outage was written on the way out
    assert "database unavailable" in log and "handing the stage back" in log
    with session_scope(url) as s:
        assert claim_stage(s, stage_id, token, "w@test", 3) is None  # the old message is stale
        again = claim_stage(s, stage_id, new_token, "w@test", 3)
        assert again is not None and again.attempts == 2  # it counted as an attempt


@pytest.mark.slow
def test_real_worker_training_survives_terminated_connections(
        home: Path, pg_url: str, synth_root: Path, worker_procs_factory) -> None:  # noqa: ANN001
    """A real ``stapipe worker`` (PostgreSQL, filesystem broker) trains a branch while every
    connection to its database is terminated every 0.3 s: the stage succeeds in one attempt."""
    from .conftest import stack_env, wait_until

    upgrade(pg_url)
    cfg = preset("tiny").model_dump(mode="json")
    for b in ("s", "sa", "st"):
        cfg["coarse"][b]["epochs"] = 1
    cfg["coarse"]["s"]["epochs"] = 3
    with session_scope(pg_url) as s:
        pid = orch.submit_pipeline(s, name="blips", dataset_root=synth_root, config=cfg, submitted_by="test").id
    workers = worker_procs_factory(stack_env(home, pg_url, None, STAPIPE_RECOVERY_INTERVAL_S="2"))
    workers.start("w1", concurrency=1)

    def stage(kind: str) -> Stage | None:
        try:
            with session_scope(pg_url) as s:
                return s.scalars(select(Stage).where(Stage.pipeline_id == pid, Stage.kind == kind)).one()
        except Exception as exc:  # our own reads are hit by the terminator too
            if is_transient(exc):
                return None
            raise

    try:
        wait_until(lambda: (st := stage("train_s_coarse")) is not None and st.status == "running", 300, 0.5,
                   "train_s_coarse to start")
        with Terminator(pg_url, interval=0.3) as term:
            wait_until(lambda: (st := stage("train_s_coarse")) is not None and st.status not in ("queued", "running"),
                       300, 0.5, "train_s_coarse to finish")
        st = stage("train_s_coarse")
        assert st is not None
        print(workers.log("w1"))
        assert term.killed >= 3, term.killed
        assert st.status == "succeeded", (st.status, st.error_summary)
        assert st.attempts == 1
        assert _epochs(pg_url, st.id) == [1, 2, 3]
    finally:
        with session_scope(pg_url) as s:
            orch.cancel_pipeline(s, pid)
        workers.stop_all()
