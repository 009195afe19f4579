"""Real processes for the browser tests: gunicorn serving ``dashboard.wsgi`` and one ``stapipe
worker`` on the embedded defaults (SQLite, filesystem broker) in a temp home, Chromium's path and
flags, and polling helpers. One place, so every browser test starts the stack the same way."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from .conftest import TOKEN

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Child processes in their own process groups, all killed at teardown whatever happens."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def wait_js(page, expression: str, timeout: float, what: str):  # type: ignore[no-untyped-def]
    """Poll a JS expression from Python: page.wait_for_function evaluates strings inside the page,
    which the dashboard's Content-Security-Policy (no 'unsafe-eval') rightly forbids."""
    return wait_for(lambda: page.evaluate(expression), timeout, what)


def _up(base: str) -> bool:
    try:
        return requests.get(f"{base}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def dashboard_and_worker(home: Path, data_root: Path, worker_name: str, **env_extra: str) -> Iterator[str]:
    """gunicorn + one worker (queues cpu,gpu, concurrency 1) on the embedded defaults in ``home``;
    yields the dashboard's base URL and prints each process's log tail at teardown."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAPIPE_")}
    env.update(STAPIPE_HOME=str(home), STAPIPE_DATA_ROOT=str(data_root), STAPIPE_DASHBOARD_PASSWORD=TOKEN,
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **env_extra)
    procs = Processes(home / "test-logs")
    try:
        subprocess.run([sys.executable, "-m", "worker.cli", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                       capture_output=True, timeout=120)
        procs.start("gunicorn", [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                                 "--threads", "4", "dashboard.wsgi:app"], env)
        procs.start("worker", [sys.executable, "-m", "worker.cli", "worker", "--queues", "cpu,gpu",
                               "--concurrency", "1", "--hostname", worker_name], env)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(base), 60, "the dashboard")
        yield base
    finally:
        procs.stop()
        for log in sorted((home / "test-logs").glob("*.log")):
            print(f"---- {log.name} (tail) ----\n" + log.read_text(errors="replace")[-3000:])


@contextlib.contextmanager
def logged_in_page(base: str, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A Playwright page in Debian's Chromium, logged in to the dashboard at ``base``; page errors
    (uncaught JS exceptions) collect in ``page.errors``."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise AssertionError("Debian's chromium is not installed (make install puts it there)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": width, "height": height}).new_page()
            page.set_default_timeout(20_000)
            page.errors = []
            page.on("pageerror", lambda exc: page.errors.append(str(exc)))
            page.goto(f"{base}/login")
            page.fill("#password", TOKEN)
            page.click("button[type=submit]")
            yield page
        finally:
            browser.close()
