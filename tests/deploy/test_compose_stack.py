"""The container stack for real: the image built from this checkout, compose.yaml + compose.cpu.yaml
on a real Docker engine, a `tiny` pipeline driven over HTTP from the host, and the faults a
deployment meets (a killed worker, a restarted broker, a stopped worker, a full down/up).

It runs exactly the README's "try it without a GPU" commands (docs/deployment.md lists them):

    python3 tools/new_env.py
    docker compose -f compose.yaml -f compose.cpu.yaml build
    docker compose -f compose.yaml -f compose.cpu.yaml up -d --wait

with what a test needs, none of it in the command lines: a unique project name
(``COMPOSE_PROJECT_NAME``), the .env in a temp folder (``COMPOSE_ENV_FILES``), the classic builder
(``DOCKER_BUILDKIT=0``, the engine has no buildx), and in that .env a free dashboard port, 2
CPU-worker processes and a 5 s recovery sweep. The engine must already run
(.ci/run starts it with ../shared/docker/engine.sh up); without one the test FAILS. Every
service's log is kept under test-artifacts/compose-stack/ when it fails; ``down -v`` always runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from deploy_compose import ROOT

from tests.system.conftest import wait_until

# the whole run: ~3 min build from a warm cache, ~1.5 min up, the pipeline ~10-15 min on 2 idle cores
pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(2700)]

COMPOSE = ["docker", "compose", "-f", "compose.yaml", "-f", "compose.cpu.yaml"]
ARTIFACTS = ROOT / "test-artifacts" / "compose-stack"
SERVICES = ("redis", "postgres", "dashboard", "worker-gpu", "worker-cpu")
TRAININGS = tuple(f"train_{b}_{p}" for p in ("coarse", "fine") for b in ("s", "sa", "st")) + ("train_sta",)
FINAL = ("succeeded", "failed", "cancelled")
# The tiny preset with fewer epochs: 19 instead of 42; every training has an epoch 2 to be killed in
# (after epoch 1 is checkpointed); the fine ones have epochs after that, so that a stop seen in
# epoch 2 or 3 cannot arrive after the stage's last batch (a tiny epoch is a few batches, ~1.5 s).
EPOCHS = {**{f"coarse.{b}.epochs": 2 for b in ("s", "sa", "st")},
          **{f"fine.{b}.epochs": 4 for b in ("s", "sa", "st")}, "sta.epochs": 3}


def epochs_of(kind: str) -> int:
    """The epochs a training stage of the test's pipeline runs (EPOCHS above)."""
    return EPOCHS["sta.epochs"] if kind == "train_sta" else EPOCHS[f"{kind.split('_')[2]}.{kind.split('_')[1]}.epochs"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _set_env_lines(path: Path, values: dict[str, str]) -> None:
    lines = path.read_text().splitlines()
    for key, value in values.items():
        (k,) = [i for i, line in enumerate(lines) if line.startswith(f"{key}=")]
        lines[k] = f"{key}={value}"
    path.write_text("\n".join(lines) + "\n")


def _wait(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    return wait_until(pred, timeout, interval, what)


class Stack:
    """One compose project: the commands, the HTTP clients and the checks' vocabulary."""

    def __init__(self, tmp: Path) -> None:
        self.project = f"stapipe-test-{secrets.token_hex(4)}"
        self.env_file = tmp / ".env"
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # DOCKER_BUILDKIT=0: the engine of ../shared/docker/engine.sh has no buildx, so Compose uses the
        # classic builder, whose layer cache `docker build` shares (BuildKit would rebuild everything)
        self.env = {**os.environ, "COMPOSE_PROJECT_NAME": self.project, "COMPOSE_ENV_FILES": str(self.env_file),
                    "DOCKER_BUILDKIT": "0"}
        self.token = ""
        self.timings: dict[str, float] = {}
        self.earlier_logs: dict[str, str] = {}  # logs of containers that `down` removed

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        done = subprocess.run([*COMPOSE, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        self.timings[" ".join(args[:2])] = time.monotonic() - t0
        if check and done.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} exited {done.returncode}:\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def ps(self) -> dict[str, dict[str, Any]]:
        out = self.compose("ps", "-a", "--format", "json").stdout.strip()
        rows = json.loads(out) if out.startswith("[") else [json.loads(line) for line in out.splitlines() if line]
        return {r["Service"]: r for r in rows}

    def api(self, method: str, path: str, **kw: Any) -> Any:
        r = requests.request(method, f"{self.base}/api/v1{path}", timeout=30,
                             headers={"Authorization": f"Bearer {self.token}"}, **kw)
        assert r.status_code < 300, f"{method} {path}: HTTP {r.status_code} {r.text[:500]}"
        return r.json()

    def stages(self, pid: int) -> dict[str, dict[str, Any]]:
        return {s["kind"]: s for s in self.api("GET", f"/pipelines/{pid}")["stages"]}

    def epochs(self, stage_id: int) -> list[int]:
        return [e["epoch"] for e in self.api("GET", f"/stages/{stage_id}/metrics")["epochs"]]

    def stage_log(self, stage_id: int) -> str:
        return str(self.api("GET", f"/stages/{stage_id}/log", params={"lines": 5000})["text"])

    def mid_epoch(self, pid: int, exclude: set[str], *, before_last: bool = False) -> dict[str, Any] | None:
        """A running training stage inside epoch 2 or later, with batches of that epoch still to do
        (``before_last``: and at least one more epoch after it)."""
        for kind, s in self.stages(pid).items():
            p, what = s["progress"], s["progress"]["what"] or ""
            if not (kind in TRAININGS and kind not in exclude and s["status"] == "running" and what.startswith("epoch ")):
                continue
            epoch = int(what.split()[1])
            if epoch >= 2 and 0 < p["done"] < p["total"] and (not before_last or epoch < epochs_of(kind)):
                return s
        return None

    def final(self, pid: int) -> str | None:
        status = self.api("GET", f"/pipelines/{pid}")["status"]
        return status if status in FINAL else None

    def logs(self) -> dict[str, str]:
        out = {}
        for service in (*SERVICES, "migrate"):
            done = self.compose("logs", "--no-color", "--timestamps", service, timeout=120, check=False)
            out[service] = done.stdout + done.stderr
        return out

    def down_keeping_logs(self) -> None:
        """``down`` removes the containers and their logs: keep them for :meth:`save_logs`."""
        self.earlier_logs = self.logs()
        self.compose("down", timeout=300)

    def save_logs(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for service, text in self.logs().items():
            before = self.earlier_logs.get(service)
            if before is not None:
                text = f"{before}\n----- docker compose down, then up -----\n{text}"
            (ARTIFACTS / f"{service}.log").write_text(text)
        (ARTIFACTS / "ps.txt").write_text(self.compose("ps", "-a", timeout=60, check=False).stdout)


def _require_engine() -> None:
    """Fail, never skip: a CI run without the engine must not pass quietly."""
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"no Docker engine ({exc}); start it with `bash ../shared/docker/engine.sh up` (.ci/run does)")
    if info.returncode != 0:
        pytest.fail(f"no Docker engine: {info.stderr.strip()[:300]}; start it with "
                    "`bash ../shared/docker/engine.sh up` (.ci/run does)")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A Stack whose services' logs are saved when the test fails, always removed with ``down -v``."""
    _require_engine()
    st = Stack(tmp_path)
    try:
        yield st
    finally:
        st.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
        print("compose timings (s):", {k: round(v, 1) for k, v in st.timings.items()})


def _login_through_the_form(stack: Stack) -> requests.Session:
    browser = requests.Session()
    page = browser.get(f"{stack.base}/login", timeout=30)
    assert page.status_code == 200 and 'name="password"' in page.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf, page.text[:500]
    wrong = browser.post(f"{stack.base}/login", data={"csrf_token": csrf.group(1), "password": "wrong"}, timeout=30)
    assert wrong.status_code == 401 and "Wrong password" in wrong.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', wrong.text)
    assert csrf
    ok = browser.post(f"{stack.base}/login", data={"csrf_token": csrf.group(1), "password": stack.token}, timeout=30)
    assert ok.status_code == 200 and ok.url == f"{stack.base}/" and ok.history, (ok.status_code, ok.url)
    assert "Log in" not in ok.text and 'action="/logout"' in ok.text, ok.text[:500]
    return browser


def test_compose_stack_runs_a_pipeline_through_faults(stack: Stack) -> None:
    try:
        _scenario(stack)
    except BaseException:
        stack.save_logs()
        raise


def _scenario(stack: Stack) -> None:
    # -- the README's commands ------------------------------------------------------------------
    subprocess.run([sys.executable, str(ROOT / "tools" / "new_env.py"), str(stack.env_file)], check=True,
                   capture_output=True)
    _set_env_lines(stack.env_file, {"DASHBOARD_PUBLISH_PORT": str(stack.port), "CPU_WORKER_CONCURRENCY": "2",
                                    "STAPIPE_RECOVERY_INTERVAL_S": "5"})
    stack.token = next(line.split("=", 1)[1] for line in stack.env_file.read_text().splitlines()
                       if line.startswith("STAPIPE_DASHBOARD_PASSWORD="))
    stack.compose("build", timeout=1800)
    stack.compose("up", "-d", "--wait", timeout=600)
    ps = stack.ps()
    for service in SERVICES:
        assert ps[service]["Health"] == "healthy", (service, ps[service]["Status"])
    assert ps["migrate"]["State"] == "exited" and ps["migrate"]["ExitCode"] == 0, ps["migrate"]["Status"]
    assert "flower" not in ps  # opt-in profile

    # -- data into the datasets volume, then a pipeline over HTTP from the host ------------------
    stack.compose("run", "--rm", "--no-deps", "worker-cpu", "stapipe", "synth", "--classes", "3",
                  "--videos-per-class", "4", "--seconds", "4", "/srv/stapipe/data/ave", timeout=300)
    browser = _login_through_the_form(stack)
    created = stack.api("POST", "/pipelines", json={"name": "stack", "dataset_root": "ave", "preset": "tiny",
                                                        "overrides": EPOCHS})
    pid = created["id"]

    # -- docker kill the GPU worker mid-epoch: resumes from its checkpoint ------------------------
    killed = _wait(lambda: stack.mid_epoch(pid, set()), 600, "a training in mid-epoch (for docker kill)")
    killed_epochs = stack.epochs(killed["id"])
    subprocess.run(["docker", "kill", stack.container("worker-gpu")], check=True, capture_output=True)
    assert stack.stages(pid)[killed["kind"]]["status"] == "running"  # nobody told the database
    stack.compose("start", "worker-gpu")  # same container, same node name: its startup recovery takes it back
    _wait(lambda: stack.stages(pid)[killed["kind"]]["status"] == "queued"
          or stack.stages(pid)[killed["kind"]]["attempts"] == 2, 240, f"{killed['kind']} re-queued")

    # -- restart the broker mid-pipeline: nothing lost ----------------------------------------------
    stack.compose("restart", "redis", timeout=120)

    # -- docker compose stop worker-gpu mid-epoch: returns fast, the stage goes back to the queue --
    stopped = _wait(lambda: stack.mid_epoch(pid, {killed["kind"]}, before_last=True), 900,
                    "another training in mid-epoch, not its last (for stop)")
    t0 = time.monotonic()
    stack.compose("stop", "worker-gpu", timeout=300)
    stop_s = time.monotonic() - t0
    print(f"docker compose stop worker-gpu: {stop_s:.1f} s in epoch {stopped['progress']['what']} of {stopped['kind']}")
    assert stop_s < 60, f"docker compose stop worker-gpu took {stop_s:.0f} s"
    back = stack.stages(pid)[stopped["kind"]]
    assert back["status"] == "queued" and back["error_summary"] is None, back
    stack.compose("start", "worker-gpu")

    assert _wait(lambda: stack.final(pid), 1500, f"pipeline {pid} to finish", interval=2) == "succeeded", \
        {k: (s["status"], s["error_summary"]) for k, s in stack.stages(pid).items()}

    # -- what the faults left behind --------------------------------------------------------------
    stages = stack.stages(pid)
    assert all(s["status"] == "succeeded" for s in stages.values())
    config = stack.api("GET", f"/pipelines/{pid}")["config"]
    for kind in TRAININGS:
        section = config["sta"] if kind == "train_sta" else config[kind.split("_")[2]][kind.split("_")[1]]
        assert stack.epochs(stages[kind]["id"]) == list(range(1, section["epochs"] + 1)), kind  # each epoch once
    killed_log = stack.stage_log(killed["id"])
    resumed = re.search(r"resuming after epoch (\d+)", killed_log)
    # >= 2: the Redis restart may cost the worker's consumer its connection too (supervise restarts it)
    assert stages[killed["kind"]]["attempts"] >= 2 and resumed, killed_log[-2000:]
    assert int(resumed.group(1)) >= killed_epochs[-1] >= 1  # killed in epoch >= 2: the checkpoint was used
    stopped_log = stack.stage_log(stopped["id"])
    assert "handed back to the queue" in stopped_log and "resuming after epoch" in stopped_log, stopped_log[-2000:]

    # the results (contract with the "results" engineer: the evaluation key and #dataset-table)
    results = stack.api("GET", f"/pipelines/{pid}/results")
    results_page = browser.get(f"{stack.base}/pipelines/{pid}/results", timeout=30)
    assert results_page.status_code == 200
    evaluate = stages["evaluate"]
    artefacts = {a["name"]: a for a in stack.api("GET", f"/stages/{evaluate['id']}/artefacts")["items"]}
    assert "metrics.json" in artefacts

    # -- down, then up: the pipeline, its metrics and artefacts are still there -----------------------
    stack.down_keeping_logs()
    stack.compose("up", "-d", "--wait", timeout=600)
    assert stack.api("GET", f"/pipelines/{pid}")["status"] == "succeeded"
    assert stack.epochs(stages["train_sta"]["id"]) == list(range(1, config["sta"]["epochs"] + 1))
    again = {a["name"]: a for a in stack.api("GET", f"/stages/{evaluate['id']}/artefacts")["items"]}
    assert again == artefacts
    body = browser.get(stack.base + again["metrics.json"]["url"], timeout=30)  # the session cookie survives too
    assert body.status_code == 200 and hashlib.sha256(body.content).hexdigest() == again["metrics.json"]["sha256"]
    assert stack.api("GET", f"/pipelines/{pid}/results") == results

    # -- the evaluation table, checked last so that everything above runs on every branch -----------
    ev = results.get("evaluation")
    assert ev is not None, f"results API has no 'evaluation' key (the versioned evaluation schema): {sorted(results)}"
    assert ev["schema_version"] == 1 and "cc" in ev["metrics"]
    dataset = {row["method"]: row["values"] for row in ev["dataset"]}
    assert dataset["sta"]["cc"] > dataset["centre"]["cc"], dataset
    assert {v["method"] for v in ev["videos"]} >= {"sta"} and all(v["frames_scored"] > 0 for v in ev["videos"])
    assert 'id="dataset-table"' in results_page.text
    assert 'data-method="sta"' in results_page.text and 'data-method="centre"' in results_page.text
