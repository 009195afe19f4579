"""HTML pages: pipelines list, new pipeline form, pipeline, stage, re-run confirmation, results."""

from __future__ import annotations

import json

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import Conflict

from sta_models.config import PRESETS

from . import jobs, queries
from .api import log_file, pipeline_or_404, settings, stage_or_404
from .benchmark import benchmark_view, can_benchmark
from .config_form import (
    BACKBONES,
    OTHER_FIELDS,
    TRAIN_FIELDS,
    TRAIN_GROUPS,
    ConfigErrors,
    form_field_names,
    presets_for_form,
)
from .database import db_session
from .params import int_arg
from .paths import display_dataset_root
from .results import evaluation
from .submission import validate
from .views import RERUNNABLE, artefact_json, graph_columns, is_preview, stage_json

bp = Blueprint("pages", __name__)
PREVIEW_LIMIT = 48


@bp.get("/")
def pipelines():  # type: ignore[no-untyped-def]
    page = int_arg("page", 1, lo=1, hi=1_000_000)
    result = queries.list_pipelines(db_session(), page, 20)
    return render_template("pipelines.html", result=result, data_dir=settings().data_dir,
                           display_root=display_dataset_root)


def _form_page(values: dict[str, str], errors: dict[str, str], status: int = 200):  # type: ignore[no-untyped-def]
    return render_template(
        "new_pipeline.html", values=values, errors=errors, presets=PRESETS,
        presets_data=presets_for_form(), groups=TRAIN_GROUPS, fields=TRAIN_FIELDS,
        other_fields=OTHER_FIELDS, backbones=BACKBONES,
    ), status


@bp.route("/pipelines/new", methods=["GET", "POST"])
def new_pipeline():  # type: ignore[no-untyped-def]
    if request.method == "GET":
        values = {"name": "", "dataset_root": request.args.get("dataset_root", ""), "preset": "tiny",
                  **presets_for_form()["tiny"]}
        return _form_page({k: str(v) for k, v in values.items()}, {})
    form = request.form
    values = {k: form.get(k, "") for k in ("name", "dataset_root", "preset", *form_field_names())}
    overrides = {k: form[k] for k in form_field_names() if k in form}
    try:
        sub = validate(settings(), name=form.get("name"), dataset_root=form.get("dataset_root"),
                       preset=form.get("preset"), overrides=overrides)
    except ConfigErrors as exc:
        return _form_page(values, exc.fields, 422)
    pipeline = jobs.submit(db_session(), settings(), name=sub.name, dataset_root=sub.dataset_root, config=sub.config,
                           submitted_by="web")
    flash(f"Pipeline {pipeline.id} submitted.")
    return redirect(url_for("pages.pipeline", pipeline_id=pipeline.id))


@bp.get("/pipelines/<int:pipeline_id>")
def pipeline(pipeline_id: int):  # type: ignore[no-untyped-def]
    p = pipeline_or_404(pipeline_id)
    session = db_session()
    stages = queries.stages_of(session, p.id)
    progress = queries.progress_for(session, [p.id])[p.id]
    return render_template(
        "pipeline.html", p=p, stages=stages, columns=graph_columns(stages), progress=progress,
        dataset=display_dataset_root(p.dataset_root, settings().data_dir), rerunnable=RERUNNABLE,
        has_evaluate=any(s.kind == "evaluate" for s in stages), can_benchmark=can_benchmark(stages),
        config_json=json.dumps(p.config, indent=2),
    )


@bp.post("/pipelines/<int:pipeline_id>/cancel")
def cancel_pipeline(pipeline_id: int):  # type: ignore[no-untyped-def]
    p = pipeline_or_404(pipeline_id)
    try:
        jobs.cancel_pipeline(db_session(), p)
        flash(f"Pipeline {p.id} is being cancelled.")
    except Conflict as exc:
        flash(exc.description or "cannot cancel", "error")
    return redirect(url_for("pages.pipeline", pipeline_id=p.id))


@bp.get("/stages/<int:stage_id>")
def stage(stage_id: int):  # type: ignore[no-untyped-def]
    s = stage_or_404(stage_id)
    session = db_session()
    artefacts = queries.artefacts_of(session, s.id)
    previews = [a for a in artefacts if is_preview(a)]
    show_all = request.args.get("previews") == "all"
    return render_template(
        "stage.html", s=s, p=s.pipeline, info=stage_json(s), rerunnable=s.status in RERUNNABLE,
        artefacts=[artefact_json(a, settings()) for a in artefacts],
        previews=[artefact_json(a, settings()) for a in (previews if show_all else previews[:PREVIEW_LIMIT])],
        previews_total=len(previews), show_all=show_all,
        failed_items=queries.failed_items(session, s.id), has_log=log_file(s) is not None,
    )


@bp.route("/stages/<int:stage_id>/rerun", methods=["GET", "POST"])
def rerun(stage_id: int):  # type: ignore[no-untyped-def]
    s = stage_or_404(stage_id)
    session = db_session()
    if request.method == "POST":
        try:
            stages = jobs.rerun(session, s)
        except Conflict as exc:
            flash(exc.description or "cannot re-run", "error")
            return redirect(url_for("pages.stage", stage_id=s.id))
        flash(f"Re-running {len(stages)} stage(s): {', '.join(x.kind for x in stages)}.")
        return redirect(url_for("pages.pipeline", pipeline_id=s.pipeline_id))
    plan = jobs.rerun_plan(session, s) if s.status in RERUNNABLE else []
    return render_template("rerun.html", s=s, p=s.pipeline, plan=plan, allowed=s.status in RERUNNABLE)


@bp.get("/pipelines/<int:pipeline_id>/results")
def results(pipeline_id: int):  # type: ignore[no-untyped-def]
    p = pipeline_or_404(pipeline_id)
    return render_template("results.html", p=p, ev=evaluation(db_session(), p, settings()),
                           bench=benchmark_view(db_session(), p))
