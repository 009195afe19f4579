"""The same commands run natively: compose.yaml's services started as plain processes.

Each stapipe service's command and environment are taken from compose.yaml and only rewritten
where Docker would differ: service host names → this machine's servers (Redis on a dedicated
database number, a fresh PostgreSQL database), volume paths → temporary folders, the published
port → a free local one. Then: `stapipe db upgrade` exits 0 (twice: compose runs it at every
`up`), gunicorn answers /healthz with 200, and both workers answer a Celery ping on their queues.
Every process is killed (its whole process group) at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from deploy_compose import TEST_SECRETS, command_of, environment, load, mounts, option

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

REDIS_DB = 13  # this test's own Redis database, flushed before and after (others use other numbers)
CONTAINER_ROOT = "/srv/stapipe"  # where the image keeps everything; mapped onto a tmp dir
BIN = Path(sys.executable).parent  # the venv's console scripts: stapipe, gunicorn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """Native stand-ins for compose's servers, and the processes started against them."""

    def __init__(self, tmp: Path, pg_db: str, pg_user: str) -> None:
        self.tmp = tmp
        self.port = _free_port()
        # host names of compose services -> (scheme-specific) native replacements
        self.pg = f"postgresql+psycopg://{pg_user}@127.0.0.1:5432/{pg_db}"
        self.broker = f"redis://127.0.0.1:6379/{REDIS_DB}"
        self.api = f"http://127.0.0.1:{self.port}"
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    # -- rewriting ------------------------------------------------------------------------------

    def path(self, container_path: str) -> str:
        assert container_path.startswith(CONTAINER_ROOT + "/"), container_path
        return str(self.tmp / "srv" / container_path[len(CONTAINER_ROOT) + 1 :])

    def value(self, key: str, value: str) -> str:
        if value.startswith(CONTAINER_ROOT + "/"):
            return self.path(value)
        if "://" in value:
            host = urlsplit(value).hostname
            replacement = {"postgres": self.pg, "redis": self.broker, "dashboard": self.api}.get(host or "")
            if replacement:
                return replacement
        return value

    def env(self, svc: dict) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STAPIPE_")}
        env.update({k: self.value(k, v) for k, v in environment(svc).items()})
        env["OMP_NUM_THREADS"] = "1"
        env["HOSTNAME"] = socket.gethostname()  # Docker sets it to the container's; Celery's %h is the same
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the image's venv is first on PATH too
        # what Docker does for a named volume: the mount point exists (and is writable)
        for _, target, _ in mounts(svc):
            Path(self.path(target)).mkdir(parents=True, exist_ok=True)
        return env

    def argv(self, svc: dict) -> list[str]:
        argv = command_of(svc)
        exe = BIN / argv[0]
        assert exe.is_file(), f"{argv[0]} is not installed in {BIN} (it is the container's entry point)"
        argv[0] = str(exe)
        if option(argv, "--bind"):
            argv[argv.index("--bind") + 1] = f"127.0.0.1:{self.port}"
        return argv

    def healthcheck(self, svc: dict) -> list[str]:
        """The service's healthcheck as a local command (CMD-SHELL → sh -c, CMD → exec)."""
        test = [self.value("", t).replace("127.0.0.1:8000", f"127.0.0.1:{self.port}") for t in svc["healthcheck"]["test"]]
        kind, rest = test[0], test[1:]
        return ["/bin/sh", "-c", rest[0]] if kind == "CMD-SHELL" else [str(BIN / rest[0]) if (BIN / rest[0]).is_file() else rest[0], *rest[1:]]

    def check_health(self, name: str, svc: dict) -> None:
        done = subprocess.run(self.healthcheck(svc), env=self.env(svc), cwd=self.tmp, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, f"{name}: healthcheck failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"

    # -- processes ------------------------------------------------------------------------------

    def run(self, name: str, svc: dict, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(svc), env=self.env(svc), cwd=self.tmp, capture_output=True,
                              text=True, timeout=timeout)

    def start(self, name: str, svc: dict) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as fh:
            # own session = own process group, so teardown can kill the worker's pool children too
            proc = subprocess.Popen(self.argv(svc), env=self.env(svc), cwd=self.tmp, stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc, log))
        return proc

    def log_tail(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-4000:]

    def stop_all(self) -> None:
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)  # Celery's warm shutdown, gunicorn's graceful stop
        deadline = time.monotonic() + 20
        for _, proc, _ in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            # then whatever is left of the group (pool children), even if the parent already exited
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _admin_connection(psycopg):
    """A connection allowed to CREATE DATABASE: the suite's `test` database, else the maintenance one."""
    errors = []
    for dsn in ("dbname=test", "dbname=postgres", "dbname=postgres user=postgres"):
        try:
            return psycopg.connect(f"host=127.0.0.1 port=5432 {dsn}", autocommit=True)
        except psycopg.OperationalError as exc:
            errors.append(f"{dsn}: {str(exc).strip().splitlines()[-1]}")
    pytest.fail("cannot reach PostgreSQL on 127.0.0.1:5432 (.ci/run starts it): " + "; ".join(errors))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    import psycopg
    import redis

    r = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    r.ping()  # fails loudly (no skip) when the machine's Redis is down: .ci/run starts it
    r.flushdb()
    name = f"stapipe_deploy_{secrets.token_hex(4)}"
    admin = _admin_connection(psycopg)
    admin.execute(f'CREATE DATABASE "{name}"')
    s = Stack(tmp_path_factory.mktemp("native"), name, admin.info.user)
    try:
        yield s
    finally:
        s.stop_all()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        r.flushdb()
        r.close()


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    return load({**TEST_SECRETS, "CPU_WORKER_CONCURRENCY": "1"})["services"]  # two cores shared by the whole suite


def _wait_healthz(stack: Stack, proc: subprocess.Popen, timeout: float) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"gunicorn exited with {proc.returncode}:\n{stack.log_tail('dashboard')}"
        try:
            with urllib.request.urlopen(f"{stack.api}/healthz", timeout=3) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = repr(exc)
        time.sleep(0.5)
    pytest.fail(f"/healthz never answered 200 ({last}):\n{stack.log_tail('dashboard')}")


def _wait_pong(stack: Stack, nodes: dict[str, tuple[subprocess.Popen, str]], timeout: float) -> dict:
    """Ping until every node prefix answered; returns {node name: active queue names}."""
    from celery import Celery

    app = Celery("deploy-test", broker=stack.broker)
    try:
        deadline = time.monotonic() + timeout
        answered: dict[str, str] = {}
        while time.monotonic() < deadline and len(answered) < len(nodes):
            for service, (proc, _) in nodes.items():
                assert proc.poll() is None, f"{service} exited with {proc.returncode}:\n{stack.log_tail(service)}"
            for reply in app.control.ping(timeout=2.0) or []:
                for node, body in reply.items():
                    assert body == {"ok": "pong"}, body
                    for service, (_, prefix) in nodes.items():
                        if node.startswith(prefix):
                            answered[service] = node
        missing = set(nodes) - set(answered)
        assert not missing, "no Celery pong from " + ", ".join(
            f"{m}:\n{stack.log_tail(m)}" for m in sorted(missing)
        )
        queues = app.control.inspect(destination=list(answered.values()), timeout=5.0).active_queues() or {}
        return {service: sorted(q["name"] for q in queues.get(node, [])) for service, node in answered.items()}
    finally:
        app.close()


def test_migrate_exits_0_and_is_idempotent(stack: Stack, services: dict) -> None:
    # compose runs the one-shot at every `docker compose up`, so a second run must be a no-op
    for attempt in (1, 2):
        done = stack.run("migrate", services["migrate"], timeout=300)
        assert done.returncode == 0, (
            f"`stapipe db upgrade` (run {attempt}) exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )


def test_gunicorn_serves_healthz(stack: Stack, services: dict) -> None:
    dashboard = stack.start("dashboard", services["dashboard"])
    status, body = _wait_healthz(stack, dashboard, timeout=120)
    assert status == 200 and body.get("status") == "ok", body
    stack.check_health("dashboard", services["dashboard"])  # compose's own healthcheck command


def test_workers_answer_ping_on_their_queues(stack: Stack, services: dict) -> None:
    workers = {}
    for name in ("worker-cpu", "worker-gpu"):  # the GPU worker's command starts on a CPU machine too
        node = option(command_of(services[name]), "--hostname")
        workers[name] = (stack.start(name, services[name]), node.split("@")[0] + "@")
    queues = _wait_pong(stack, workers, timeout=180)
    assert queues == {"worker-cpu": ["cpu"], "worker-gpu": ["gpu"]}, queues
    for name in workers:
        stack.check_health(name, services[name])  # `celery inspect ping` as compose runs it
