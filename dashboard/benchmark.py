"""The "Benchmark on STAViS sets" action and its table on the Results page (issue 13).

The action adds the pipeline's optional ``benchmark`` stage (``worker.orchestration.request_benchmark``)
on the gpu queue; from then on it is a stage like any other (progress, log, cancel, re-run on its
page). Its table is ``benchmark.json`` in the stage's folder (``sta_models.benchmark``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, flash, redirect, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session
from werkzeug.exceptions import Conflict

from db.models import Pipeline, Stage

from .api import pipeline_or_404, settings
from .database import db_session

bp = Blueprint("benchmark", __name__)
MAX_BYTES = 5 * 1024 * 1024


@dataclass
class BenchmarkView:
    stage: Stage | None = None
    table: dict[str, Any] | None = None
    problem: str | None = None
    columns: list[tuple[str, str]] = field(default_factory=list)  # (set, metric)


def can_benchmark(stages: list[Stage]) -> bool:
    """The action is offered once STA is trained and no benchmark is running."""
    by_kind = {s.kind: s for s in stages}
    sta, bench = by_kind.get("train_sta"), by_kind.get("benchmark")
    return sta is not None and sta.status in ("succeeded", "skipped") and (
        bench is None or bench.status in ("succeeded", "failed", "cancelled"))


def benchmark_view(session: Session, pipeline: Pipeline) -> BenchmarkView:
    from . import queries
    from .paths import safe_artefact_file

    view = BenchmarkView(next((s for s in queries.stages_of(session, pipeline.id) if s.kind == "benchmark"), None))
    if view.stage is None or view.stage.status != "succeeded":
        return view
    path = next((safe_artefact_file(a.path, settings().artefact_dir) for a in queries.artefacts_of(session, view.stage.id)
                 if a.path.endswith("/benchmark.json")), None)
    try:
        if path is None or path.stat().st_size > MAX_BYTES:
            raise OSError
        view.table = json.loads(path.read_text(encoding="utf-8"))
        view.columns = [(s, m) for s in view.table["sets"] for m in view.table["metrics"]]
    except (OSError, ValueError, KeyError, TypeError):
        view.problem = "benchmark.json could not be read"
    return view


@bp.post("/pipelines/<int:pipeline_id>/benchmark")
def start(pipeline_id: int) -> ResponseReturnValue:
    from worker import orchestration

    p = pipeline_or_404(pipeline_id)
    session = db_session()
    try:
        stage = orchestration.request_benchmark(session, p.id)
    except orchestration.OrchestrationError as exc:
        session.rollback()
        flash(str(Conflict(str(exc)).description), "error")
        return redirect(url_for("pages.pipeline", pipeline_id=p.id))
    flash(f"Benchmark on the STAViS sets queued (stage {stage.id}).")
    return redirect(url_for("pages.stage", stage_id=stage.id))
