"""Fixtures for the job-system tests: fresh PostgreSQL databases, a dedicated Redis DB, settings in a
temp home, a message recorder instead of Celery, and real ``stapipe worker`` processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import (  # noqa: F401  (re-exported for the system tests)
    PG_ADMIN_URL,
    REDIS_BASE,
    DispatchRecorder,
    fresh_pg_database,
    pg_available,
    redis_available,
    require_servers,
)

ROOT = Path(__file__).resolve().parents[2]
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
    "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]


@pytest.fixture
def pg_url() -> Iterator[str]:
    require_servers(postgres=True)
    with fresh_pg_database("stapipe_sys") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'stapipe.db'}"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Settings pointed at a temp home (embedded defaults) for in-process code."""
    from stapipe_settings import get_settings

    h = tmp_path / "home"
    monkeypatch.setenv("STAPIPE_HOME", str(h))
    for var in ("STAPIPE_DATABASE_URL", "STAPIPE_BROKER_URL", "STAPIPE_ARTEFACT_ROOT", "STAPIPE_LOG_ROOT",
                "STAPIPE_DATA_ROOT", "STAPIPE_FAULTS"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield h
    get_settings.cache_clear()


Recorder = DispatchRecorder


@pytest.fixture
def recorder(dispatched: DispatchRecorder) -> DispatchRecorder:
    return dispatched


# ---------------------------------------------------------------------------------------------
# real worker processes


@dataclass
class WorkerProcs:
    """``stapipe worker`` subprocesses in their own process groups; always killed at teardown."""

    env: dict[str, str]
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, queues: str = "cpu,gpu", concurrency: int = 1, extra_env: dict[str, str] | None = None,
              ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker", "--queues", queues, "--concurrency", str(concurrency),
             "--hostname", f"{name}@test", "--loglevel", "INFO"],
            cwd=ROOT, env={**self.env, **(extra_env or {})}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)

    def log(self, name: str) -> str:
        p = self.log_dir / f"{name}.log"
        return p.read_text(errors="replace")[-5000:] if p.exists() else ""


@pytest.fixture
def worker_procs_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], WorkerProcs]]:
    made: list[WorkerProcs] = []

    def make(env: dict[str, str]) -> WorkerProcs:
        wp = WorkerProcs(env=env, log_dir=tmp_path / "worker-logs")
        made.append(wp)
        return wp

    try:
        yield make
    finally:
        for wp in made:
            wp.stop_all()


def stack_env(home: Path, db_url: str | None, broker_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAPIPE_")}
    env.update(STAPIPE_HOME=str(home), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if db_url:
        env["STAPIPE_DATABASE_URL"] = db_url
    if broker_url:
        env["STAPIPE_BROKER_URL"] = broker_url
    env.update(extra)
    return env


def wait_until(pred: Callable[[], object], timeout: float, interval: float = 0.5, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def restart_redis() -> None:
    """``redis-cli shutdown nosave`` then start it again (the test's finally guarantees the start)."""
    subprocess.run(["redis-cli", "shutdown", "nosave"], check=False, capture_output=True)
    ensure_redis()


def ensure_redis(timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if redis_available():
            return
        subprocess.run(REDIS_START, check=False, capture_output=True)
        time.sleep(0.5)
    raise RuntimeError("Redis did not come back")
