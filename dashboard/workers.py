"""The workers page and ``GET /api/v1/workers``: who is online, on which queues and device, running
what. Rows are written by the workers themselves (worker.presence); this only reads them."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, render_template, url_for
from flask.typing import ResponseReturnValue

from db.models import Stage
from worker.registry import ONLINE_S, WorkerInfo, queues_served, unserved_message, workers
from worker.stage_graph import Queue

from .database import db_session
from .formatting import iso

bp = Blueprint("workers", __name__)


def worker_json(w: WorkerInfo) -> dict[str, Any]:
    return {
        "name": w.name, "host": w.host, "queues": w.queues, "device": w.device, "pid": w.pid,
        "concurrency": w.concurrency, "online": w.online, "started_at": iso(w.started_at),
        "last_heartbeat": iso(w.last_heartbeat),
        "current_stages": [{"id": s.id, "kind": s.kind, "pipeline_id": s.pipeline_id,
                            "url": url_for("pages.stage", stage_id=s.id)} for s in w.current_stages],
    }


def unserved_queues(stages: list[Stage]) -> dict[str, str]:
    """Queue → warning for each queue a queued stage of ``stages`` waits on and no online worker
    consumes (empty when nothing is queued, so pages without queued stages cost no query)."""
    waiting = {s.queue for s in stages if s.status == "queued"}
    if not waiting:
        return {}
    served = queues_served(db_session())
    return {q: unserved_message(q) for q in sorted(waiting - served)}


@bp.get("/workers")
def workers_page() -> ResponseReturnValue:
    items = workers(db_session(), include_offline=True)
    return render_template("workers.html", workers=items, online_s=ONLINE_S, queues=[str(q) for q in Queue],
                           served=sorted({q for w in items if w.online for q in w.queues}))


@bp.get("/api/v1/workers")
def workers_api() -> ResponseReturnValue:
    items = workers(db_session(), include_offline=True)
    return jsonify(items=[worker_json(w) for w in items], online=sum(w.online for w in items),
                   queues_served=sorted({q for w in items if w.online for q in w.queues}),
                   online_within_s=ONLINE_S)
