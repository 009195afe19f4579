"""Dashboard latency against PostgreSQL: 200 pipelines x 13 stages x 30 epochs.

Creates a fresh database on the local PostgreSQL (dropped afterwards), fills it with bulk inserts,
serves the real app with gunicorn (2 sync workers, as in compose.yaml) on 127.0.0.1 and times
sequential requests (a bounded loop per endpoint, after a warm-up) with one keep-alive HTTP
session. Prints median / p95 / max per endpoint and whether p95 < 50 ms.

    .venv/bin/python bench/bench_dashboard.py [--requests 200] [--pg-admin URL]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from sqlalchemy import create_engine, insert, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from db.models import EpochMetric, Pipeline, Stage  # noqa: E402
from worker.stages import GRAPH  # noqa: E402

STAGES = GRAPH.required

N_PIPELINES, N_EPOCHS = 200, 30
TOKEN = "bench-token"
TARGET_P95_MS = 50.0


def fill(url: str, data_root: Path) -> tuple[list[int], list[int]]:
    """Bulk-insert the pipelines, stages and epochs; returns (pipeline ids, training stage ids)."""
    engine = create_engine(url)
    now = datetime.now(UTC)
    trainings = [s.kind for s in STAGES if s.kind.startswith("train_")]
    with engine.begin() as conn:
        pipelines = [
            {"name": f"bench-{i:03d}", "dataset_root": str(data_root / "ave"), "config": {"preset": "tiny"},
             "status": "succeeded" if i < 150 else "running", "created_at": now - timedelta(minutes=N_PIPELINES - i),
             "started_at": now - timedelta(minutes=N_PIPELINES - i), "submitted_by": "bench"}
            for i in range(N_PIPELINES)]
        pipeline_ids = list(conn.scalars(insert(Pipeline).returning(Pipeline.id), pipelines))
        stages = []
        for pid in pipeline_ids:
            for pos, spec in enumerate(STAGES):
                stages.append({"pipeline_id": pid, "kind": spec.kind, "position": pos, "status": "succeeded",
                               "queue": str(spec.queue), "depends_on": list(spec.depends_on), "attempts": 1,
                               "worker_host": "gpu0@bench", "started_at": now, "finished_at": now, "updated_at": now,
                               "progress_done": 400 if spec.kind == "extract" else 0,
                               "progress_total": 402 if spec.kind == "extract" else 0,
                               "progress_failed": 2 if spec.kind == "extract" else 0})
        rows = conn.execute(insert(Stage).returning(Stage.id, Stage.kind), stages).all()
        training_ids = [sid for sid, kind in rows if kind in trainings]
        # 30 epochs for every stage (13 x 30 per pipeline, as the issue asks)
        epochs = [{"stage_id": sid, "epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_accuracy": 0.5,
                   "lr": 1e-3, "seconds": 12.0, "extra": {"cc": 0.4}, "created_at": now}
                  for sid, _ in rows for e in range(1, N_EPOCHS + 1)]
        for i in range(0, len(epochs), 10000):
            conn.execute(insert(EpochMetric), epochs[i:i + 10000])
        conn.execute(text("ANALYZE"))
    engine.dispose()
    return pipeline_ids, training_ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(http: requests.Session, url: str, n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        http.get(url).raise_for_status()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        r = http.get(url)
        out.append((time.perf_counter() - start) * 1000)
        r.raise_for_status()
    return out


def timed_many(http: requests.Session, urls: list[str], warmup: int = 20) -> list[float]:
    for url in urls[:warmup]:
        http.get(url).raise_for_status()
    out = []
    for url in urls:
        start = time.perf_counter()
        r = http.get(url)
        out.append((time.perf_counter() - start) * 1000)
        r.raise_for_status()
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="timed requests per endpoint")
    parser.add_argument("--pg-admin", default=os.environ.get(
        "STAPIPE_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()

    name = f"stapipe_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.pg_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.pg_admin.rsplit("/", 1)[0] + f"/{name}"
    proc = None
    try:
        from db.migrate import upgrade

        upgrade(url)
        tmp = Path(tempfile.mkdtemp(prefix="stapipe-bench-"))
        (tmp / "data" / "ave").mkdir(parents=True)
        t0 = time.perf_counter()
        pipeline_ids, training_ids = fill(url, tmp / "data")
        print(f"filled {len(pipeline_ids)} pipelines, {len(pipeline_ids) * 13} stages, "
              f"{len(pipeline_ids) * 13 * N_EPOCHS} epoch rows in {time.perf_counter() - t0:.1f} s")
        port = free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("STAPIPE_")},
               "STAPIPE_HOME": str(tmp), "STAPIPE_DATABASE_URL": url, "STAPIPE_DASHBOARD_PASSWORD": TOKEN,
               "STAPIPE_SECRET_KEY": "bench" * 8}
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                                 "dashboard.wsgi:app"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(base + "/healthz", timeout=2).ok:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("gunicorn did not start")
            time.sleep(0.3)

        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {TOKEN}"
        rng = random.Random(0)
        n = args.requests
        some_pipelines = [rng.choice(pipeline_ids) for _ in range(n)]
        some_stages = [rng.choice(training_ids) for _ in range(n)]
        cases = {
            "pipelines list, HTML (`/`, 20 per page)": timed(http, base + "/", n),
            "pipelines list, JSON (`/api/v1/pipelines`)": timed(http, base + "/api/v1/pipelines", n),
            "pipelines list, page 10 (`/?page=10`)": timed(http, base + "/?page=10", n),
            "pipeline page, HTML (`/pipelines/<id>`)": timed_many(http, [f"{base}/pipelines/{p}" for p in some_pipelines]),
            "pipeline, JSON (`/api/v1/pipelines/<id>`)": timed_many(
                http, [f"{base}/api/v1/pipelines/{p}" for p in some_pipelines]),
            "metrics, full history (`?since=0`, 30 epochs)": timed_many(
                http, [f"{base}/api/v1/stages/{s}/metrics?since=0" for s in some_stages]),
            "metrics, live poll (`?since=29`, 1 new epoch)": timed_many(
                http, [f"{base}/api/v1/stages/{s}/metrics?since=29" for s in some_stages]),
        }
        print(f"\n{n} sequential requests per endpoint after 20 warm-up requests; gunicorn --workers 2 (sync)\n")
        print("| endpoint | median ms | p95 ms | max ms | p95 < 50 ms |")
        print("|---|---|---|---|---|")
        ok = True
        for label, values in cases.items():
            q = p95(values)
            ok &= q < TARGET_P95_MS
            print(f"| {label} | {statistics.median(values):.1f} | {q:.1f} | {max(values):.1f} | "
                  f"{'yes' if q < TARGET_P95_MS else '**no**'} |")
        return 0 if ok else 1
    finally:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
