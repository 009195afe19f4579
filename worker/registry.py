"""Which workers are online: each worker keeps its own row in ``workers`` (see worker.presence).

Torch- and Celery-free, so the dashboard and the CLI read it cheaply. A worker is online while its
heartbeat is younger than ``ONLINE_S``; a SIGKILLed worker's row simply goes stale (and is pruned
after ``PRUNE_S``), a cleanly stopped worker deletes its row.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.models import Stage, StageStatus, Worker, aware, utcnow

HEARTBEAT_S = 10.0  # how often a worker writes its row
ONLINE_S = 3 * HEARTBEAT_S + 5  # a row younger than this is an online worker
PRUNE_S = 24 * 3600.0  # stale rows older than this are deleted by the next worker that starts


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    host: str
    queues: list[str]
    device: str
    pid: int | None
    concurrency: int | None
    started_at: datetime
    last_heartbeat: datetime
    online: bool
    current_stages: list[Stage]


def detect_device(queues: list[str]) -> str:
    """What the worker computes on, without importing torch (the Celery parent must not touch CUDA):
    the NVIDIA driver's /proc entries, filtered by CUDA_VISIBLE_DEVICES; cpu for a cpu-only worker."""
    cores = os.cpu_count() or 1
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if "gpu" not in queues or visible in ("", "-1"):
        return f"cpu ({cores} cores)"
    models = []
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        try:
            with open(info, encoding="utf-8", errors="replace") as fh:
                line = next((x for x in fh if x.startswith("Model:")), "Model: NVIDIA GPU")
        except OSError:
            continue
        models.append(line.split(":", 1)[1].strip())
    if visible:
        wanted = [int(x) for x in visible.split(",") if x.strip().isdigit()]
        models = [m for i, m in enumerate(models) if i in wanted] or models[:0]
    if not models:
        return f"cpu ({cores} cores, no GPU visible)"
    return "cuda: " + ", ".join(models)


def register(session: Session, *, name: str, host: str, queues: list[str], device: str, pid: int | None,
             concurrency: int | None) -> None:
    """Insert or refresh this worker's row (a restarted worker with the same name takes it over). Commits."""
    now = utcnow()
    session.execute(delete(Worker).where(Worker.last_heartbeat < now - timedelta(seconds=PRUNE_S)))
    row = session.scalars(select(Worker).where(Worker.name == name)).one_or_none()
    if row is None:
        row = Worker(name=name)
        session.add(row)
    row.host, row.queues, row.device, row.pid, row.concurrency = host, list(queues), device, pid, concurrency
    row.started_at = row.last_heartbeat = now
    session.commit()


def beat(session: Session, name: str) -> bool:
    """Refresh the heartbeat; False when the row is gone (pruned, or the DB was reset). Commits."""
    row = session.scalars(select(Worker).where(Worker.name == name)).one_or_none()
    if row is None:
        return False
    row.last_heartbeat = utcnow()
    session.commit()
    return True


def unregister(session: Session, name: str) -> None:
    session.execute(delete(Worker).where(Worker.name == name))
    session.commit()


def workers(session: Session, *, include_offline: bool = False) -> list[WorkerInfo]:
    """Workers by name, each with the stages it is running now (two queries)."""
    now = utcnow()
    rows = list(session.scalars(select(Worker).order_by(Worker.name)))
    running = list(session.scalars(select(Stage).where(Stage.status == StageStatus.RUNNING,
                                                       Stage.worker_host.in_([r.name for r in rows]))))
    out = []
    for r in rows:
        online = now - aware(r.last_heartbeat) < timedelta(seconds=ONLINE_S)
        if online or include_offline:
            out.append(WorkerInfo(r.name, r.host, list(r.queues or []), r.device, r.pid, r.concurrency,
                                  r.started_at, r.last_heartbeat, online,
                                  [s for s in running if s.worker_host == r.name]))
    return out


def queues_served(session: Session) -> set[str]:
    """The queues at least one online worker consumes."""
    return {q for w in workers(session) for q in w.queues}


def unserved_message(queue: str) -> str:
    """The one line shown wherever a stage waits on a queue no worker consumes."""
    return (f"no worker is online for queue {queue!r}: start one with `stapipe worker --queues {queue}` "
            "(or `stapipe up`) pointed at the same database and broker")


__all__ = ["HEARTBEAT_S", "ONLINE_S", "WorkerInfo", "detect_device", "register", "beat", "unregister",
           "workers", "queues_served", "unserved_message"]
