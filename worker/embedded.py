"""Starting and stopping the local stack (workers + dashboard) as child processes.

Used by ``stapipe up``, ``stapipe run --workers N`` and ``stapipe demo``. Each child gets its own
process group so stopping it also stops its pool children (Celery prefork, gunicorn workers).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stapipe_settings import Settings


@dataclass
class Stack:
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    log_dir: Path | None = None

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=out or subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=True)
        if out is not None:
            out.close()
        self.procs.append((name, proc))
        return proc

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every group (Celery: warm shutdown), then SIGKILL what is left.

        A second Ctrl-C or SIGTERM while stopping must not abandon the children half-stopped, so
        both are ignored until every group is gone.
        """
        with _signals_ignored():
            self._stop(timeout)

    def _stop(self, timeout: float) -> None:
        for _, proc in self.procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.procs.clear()

    def dead(self) -> list[str]:
        return [name for name, proc in self.procs if proc.poll() is not None]


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def worker_argv(queues: str, hostname: str, concurrency: int | None = None) -> list[str]:
    argv = [sys.executable, "-m", "worker.cli", "worker", "--queues", queues, "--hostname", hostname]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return argv


def dashboard_argv(settings: Settings) -> list[str]:
    """gunicorn on ``dashboard.wsgi:app`` (what compose runs); ``stapipe dashboard`` (Flask's
    development server) only where gunicorn is missing."""
    if importlib.util.find_spec("gunicorn") is not None:
        return [sys.executable, "-m", "gunicorn", "--bind", f"{settings.dashboard_host}:{settings.dashboard_port}",
                "--workers", "1", "--threads", "4", "--graceful-timeout", "5", "dashboard.wsgi:app"]
    return [sys.executable, "-m", "worker.cli", "dashboard"]


def wait_for_port(host: str, port: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return True
        time.sleep(0.3)
    return False


URL_FILE = "dashboard_url"


def url_path(settings: Settings) -> Path:
    """Where ``stapipe up``/``demo`` record the dashboard's address for the client commands."""
    return settings.resolved_home() / URL_FILE


def write_url(settings: Settings, url: str) -> Path:
    path = url_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(url.rstrip("/") + "\n", encoding="utf-8")
    return path


def clear_url(settings: Settings, url: str) -> None:
    """Forget the address on shutdown, if it is still ours."""
    path = url_path(settings)
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8").strip() == url.rstrip("/"):
            path.unlink()


def dashboard_url(settings: Settings) -> str:
    return f"http://{settings.dashboard_host}:{settings.dashboard_port}"


def login_hint(settings: Settings) -> str:
    if settings.dashboard_password:
        return "log in with STAPIPE_DASHBOARD_PASSWORD"
    token_file = settings.resolved_home() / "dashboard_token"
    for _ in range(50):
        if token_file.is_file():
            return f"login token: {token_file.read_text().strip()}  (stored in {token_file})"
        time.sleep(0.2)
    return f"login token: see {token_file}"


@contextlib.contextmanager
def local_stack(settings: Settings, *, workers: int, dashboard: bool,
                concurrency: int | None = None) -> Iterator[Stack]:
    """Start ``workers`` worker processes (queues cpu,gpu) and optionally the dashboard; stop them
    all on exit, whatever happens."""
    stack = Stack(log_dir=settings.resolved_home() / "run")
    host = socket.gethostname()
    try:
        for i in range(workers):
            stack.start(f"worker{i + 1}", worker_argv("cpu,gpu", f"worker{i + 1}@{host}", concurrency))
        if dashboard:
            stack.start("dashboard", dashboard_argv(settings))
            write_url(settings, dashboard_url(settings))
        yield stack
    finally:
        stack.stop()
        if dashboard:
            clear_url(settings, dashboard_url(settings))
