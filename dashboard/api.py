"""The JSON API (``/api/v1``), documented in ``openapi.yaml``; the pages' scripts poll it too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import NotFound

from db.models import Pipeline, Stage
from sta_models.config import DEFAULT_PRESET
from sta_models.config_overrides import ConfigErrors
from stapipe_settings import Settings
from worker.disk import pipeline_usage

from . import disk, jobs, queries
from .database import db_session
from .errors import FieldErrors
from .formatting import duration_s, iso
from .logs import read_from, tail_lines
from .params import int_arg, json_object
from .paths import inside
from .results import evaluation, evaluation_json, result_tables
from .submission import validate
from .views import artefact_json, pipeline_json, stage_json, stage_progress
from .workers import unserved_queues

bp = Blueprint("api", __name__, url_prefix="/api/v1")
OPENAPI = Path(__file__).with_name("openapi.yaml")


def settings() -> Settings:
    return current_app.extensions["stapipe"]["settings"]


def pipeline_or_404(pipeline_id: int) -> Pipeline:
    pipeline = queries.get_pipeline(db_session(), pipeline_id)
    if pipeline is None:
        raise NotFound(f"no pipeline {pipeline_id}")
    return pipeline


def stage_or_404(stage_id: int) -> Stage:
    stage = queries.get_stage(db_session(), stage_id)
    if stage is None:
        raise NotFound(f"no stage {stage_id}")
    return stage


def data_stage(stage: Stage) -> Stage:
    """The stage whose outputs ``stage`` shows: the one it reuses, or itself. Curves, log,
    previews and artefacts of a reused stage are those of the run that produced them."""
    if stage.reused_from_id is None:
        return stage
    return queries.get_stage(db_session(), stage.reused_from_id) or stage


def log_file(stage: Stage) -> Path | None:
    """The stage's log if it lies under the log or artefact root (the DB is not trusted with paths)."""
    if not stage.log_path:
        return None
    s = settings()
    try:
        path = Path(stage.log_path).resolve()
    except (OSError, RuntimeError):
        return None
    return path if inside(s.log_dir, path) or inside(s.artefact_dir, path) else None


def pipeline_detail(pipeline: Pipeline) -> dict[str, Any]:
    session = db_session()
    progress = queries.progress_for(session, [pipeline.id])[pipeline.id]
    body = pipeline_json(pipeline, progress, settings())
    body["config"] = pipeline.config
    stages = queries.stages_of(session, pipeline.id)
    body["stages"] = [stage_json(s) for s in stages]
    body["unserved_queues"] = unserved_queues(stages)
    body["disk"] = pipeline_usage(session, pipeline.id)
    return body


@bp.get("/openapi.yaml")
def openapi() -> Response:
    return Response(OPENAPI.read_text(encoding="utf-8"), mimetype="application/yaml")


@bp.get("/pipelines")
def list_pipelines() -> ResponseReturnValue:
    page = int_arg("page", 1, lo=1, hi=1_000_000)
    per_page = int_arg("per_page", 20, lo=1, hi=100)
    result = queries.list_pipelines(db_session(), page, per_page)
    return jsonify(
        items=[pipeline_json(p, prog, settings()) for p, prog in result.items],
        page=result.page, per_page=result.per_page, total=result.total, pages=result.pages,
    )


@bp.post("/pipelines")
def create_pipeline() -> ResponseReturnValue:
    body = json_object()
    unknown = sorted(set(body) - {"name", "dataset_root", "preset", "overrides"})
    if unknown:
        raise FieldErrors({k: "unknown field" for k in unknown})
    try:
        sub = validate(
            settings(), name=body.get("name"), dataset_root=body.get("dataset_root"),
            preset=body.get("preset", DEFAULT_PRESET), overrides=body.get("overrides"),
        )
    except ConfigErrors as exc:
        raise FieldErrors(exc.fields, "The pipeline was not created: some values are invalid.") from None
    session = db_session()
    pipeline = jobs.submit(
        session, settings(), name=sub.name, dataset_root=sub.dataset_root, config=sub.config, submitted_by="api"
    )
    response = jsonify(pipeline_detail(pipeline))
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_pipeline", pipeline_id=pipeline.id)
    return response


@bp.get("/estimate")
def estimate_disk() -> ResponseReturnValue:
    """Disk the pipeline would keep: same fields as a submission, as query parameters (overrides as JSON)."""
    args = request.args
    try:
        overrides = json.loads(args.get("overrides") or "{}")
    except json.JSONDecodeError:
        raise FieldErrors({"overrides": "not JSON"}) from None
    try:
        sub = validate(settings(), name=args.get("name") or "estimate", dataset_root=args.get("dataset_root"),
                       preset=args.get("preset", DEFAULT_PRESET), overrides=overrides)
    except ConfigErrors as exc:
        raise FieldErrors(exc.fields, "No estimate: some values are invalid.") from None
    try:
        return jsonify(disk.estimate_json(sub.config, sub.dataset_root))
    except (OSError, ValueError):
        raise FieldErrors({"dataset_root": "no annotations to estimate from (neither Annotations.txt nor "
                                           "split files)"}, "No estimate: the dataset cannot be read.") from None


@bp.get("/disk/gc")
def gc_dry_run() -> ResponseReturnValue:
    """What ``POST /disk/gc`` would delete now, and the bytes it would free."""
    intermediates = request.args.get("intermediates") in ("1", "true")
    return jsonify(disk.gc_json(disk.gc_plan(db_session(), settings(), intermediates), settings()))


@bp.post("/disk/gc")
def gc_collect() -> ResponseReturnValue:
    body = json_object() if request.get_data() else {}
    intermediates = body.get("intermediates", False)
    if not isinstance(intermediates, bool):
        raise FieldErrors({"intermediates": "true or false"})
    freed, done = disk.gc_run(db_session(), settings(), intermediates)
    return jsonify(freed=freed, **disk.gc_json(done, settings()))


@bp.get("/pipelines/<int:pipeline_id>")
def get_pipeline(pipeline_id: int) -> ResponseReturnValue:
    return jsonify(pipeline_detail(pipeline_or_404(pipeline_id)))


@bp.post("/pipelines/<int:pipeline_id>/cancel")
def cancel_pipeline(pipeline_id: int) -> ResponseReturnValue:
    pipeline = pipeline_or_404(pipeline_id)
    jobs.cancel_pipeline(db_session(), pipeline)
    return jsonify(pipeline_detail(pipeline))


@bp.get("/pipelines/<int:pipeline_id>/results")
def pipeline_results(pipeline_id: int) -> ResponseReturnValue:
    ev = evaluation(db_session(), pipeline_or_404(pipeline_id), settings())
    return jsonify(
        pipeline_id=pipeline_id, status=ev.stage.status if ev.stage else None, metrics=ev.metrics,
        tables=result_tables(ev.result), problem=ev.problem, videos=ev.videos, evaluation=evaluation_json(ev),
    )


@bp.get("/stages/<int:stage_id>")
def get_stage(stage_id: int) -> ResponseReturnValue:
    stage = stage_or_404(stage_id)
    body = stage_json(stage)
    body["failed_items"] = [
        {"video_id": i.video_id, "reason": i.reason} for i in queries.failed_items(db_session(), stage.id)
    ]
    return jsonify(body)


@bp.post("/stages/<int:stage_id>/cancel")
def cancel_stage(stage_id: int) -> ResponseReturnValue:
    stage = stage_or_404(stage_id)
    jobs.cancel_stage(db_session(), stage)
    return jsonify(stage_json(stage))


@bp.get("/stages/<int:stage_id>/rerun-plan")
def rerun_plan(stage_id: int) -> ResponseReturnValue:
    stage = stage_or_404(stage_id)
    plan = jobs.rerun_plan(db_session(), stage)
    return jsonify(stage_id=stage.id, rerunnable=stage_json(stage)["rerunnable"],
                   stages=[{"id": s.id, "kind": s.kind, "status": s.status} for s in plan])


@bp.post("/stages/<int:stage_id>/rerun")
def rerun_stage(stage_id: int) -> ResponseReturnValue:
    stage = stage_or_404(stage_id)
    stages = jobs.rerun(db_session(), stage)
    return jsonify(stage_id=stage.id, stages=[{"id": s.id, "kind": s.kind, "status": s.status} for s in stages])


@bp.get("/stages/<int:stage_id>/metrics")
def stage_metrics(stage_id: int) -> ResponseReturnValue:
    since = int_arg("since", 0, lo=0)
    limit = int_arg("limit", 1000, lo=1, hi=queries.METRIC_PAGE_MAX)
    stage = stage_or_404(stage_id)
    rows = queries.metrics_since(db_session(), data_stage(stage).id, since, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return jsonify(
        stage_id=stage.id, status=stage.status, attempts=stage.attempts, worker_host=stage.worker_host, since=since,
        started_at=iso(stage.started_at),
        duration_s=duration_s(stage.started_at, stage.finished_at) if stage.started_at else None,
        last_epoch=rows[-1].epoch if rows else since, more=more,
        epochs=[queries.metric_row(m) for m in rows],
        progress=stage_progress(stage),
    )


@bp.get("/stages/<int:stage_id>/log")
def stage_log(stage_id: int) -> ResponseReturnValue:
    lines = int_arg("lines", 200, lo=0, hi=5000)
    offset = int_arg("offset", -1, lo=0, hi=2**62)
    stage = stage_or_404(stage_id)
    path = log_file(data_stage(stage))
    chunk = read_from(path, offset) if offset >= 0 else tail_lines(path, lines)
    return jsonify(stage_id=stage.id, status=stage.status, exists=chunk.exists, text=chunk.text,
                   offset=chunk.offset, next_offset=chunk.next_offset, size=chunk.size)


@bp.get("/stages/<int:stage_id>/artefacts")
def stage_artefacts(stage_id: int) -> ResponseReturnValue:
    stage = stage_or_404(stage_id)
    items = [artefact_json(a, settings()) for a in queries.artefacts_of(db_session(), data_stage(stage).id)]
    return jsonify(stage_id=stage.id, items=items, total_size=sum(a["size"] for a in items))
