"""HTML pages: pipelines list, new pipeline form, pipeline, stage, re-run confirmation, results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from pydantic import ValidationError
from werkzeug.exceptions import Conflict, NotFound

from db.models import Pipeline
from sta_models.config import DEFAULT_PRESET, PRESETS, PipelineConfig
from sta_models.config_overrides import ConfigErrors
from sta_models.metric_table import LABELS as METRIC_LABELS
from sta_models.metric_table import LOWER_IS_BETTER
from worker.disk import pipeline_usage
from worker.stages import GRAPH

from . import disk, jobs, queries
from .api import data_stage, log_file, pipeline_or_404, settings, stage_or_404
from .benchmark import benchmark_view, can_benchmark
from .compare import flat_config
from .config_form import (
    BACKBONES,
    OTHER_FIELDS,
    TRAIN_FIELDS,
    TRAIN_GROUPS,
    flatten,
    form_field_names,
    presets_for_form,
)
from .database import db_session
from .formatting import human_size
from .params import INT_MAX, int_arg
from .paths import display_dataset_root
from .previews import artefact_groups, group_previews
from .results import ablation_view, dataset_view, evaluation, headline, per_video_rows
from .submission import validate
from .views import RERUNNABLE, artefact_json, graph_columns, is_preview, stage_json
from .workers import unserved_queues

bp = Blueprint("pages", __name__)
PREVIEW_LIMIT = 48


@bp.get("/")
def pipelines() -> ResponseReturnValue:
    page = int_arg("page", 1, lo=1, hi=1_000_000)
    session = db_session()
    result = queries.list_pipelines(session, page, 20)
    evaluate = queries.stages_of_kind(session, [p.id for p, _ in result.items], "evaluate")
    return render_template("pipelines.html", result=result, data_dir=settings().data_dir,
                           display_root=display_dataset_root,
                           headlines={pid: headline(s) for pid, s in evaluate.items()},
                           warnings=queries.stage_warnings(session, [p.id for p, _ in result.items]))


def _form_page(values: dict[str, str], errors: dict[str, str], status: int = 200,
               source: Pipeline | None = None) -> ResponseReturnValue:
    return render_template(
        "new_pipeline.html", values=values, errors=errors, presets=PRESETS, source=source,
        datasets=dataset_folders(settings().data_dir),
        presets_data=presets_for_form(), groups=TRAIN_GROUPS, fields=TRAIN_FIELDS,
        other_fields=OTHER_FIELDS, backbones=BACKBONES,
    ), status


def dataset_folders(data_dir: Path, limit: int = 200) -> list[str]:
    """Folders inside the data root, for the form's dataset picker (AVE-layout ones first)."""
    try:
        found = [d for d in data_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError:
        return []
    found.sort(key=lambda d: (not (d / "Annotations.txt").is_file(), d.name))
    return [d.name for d in found[:limit]]


def clone_source(raw: str | None) -> Pipeline | None:
    """The pipeline a "New pipeline from this one" form starts from (``?from=ID``); 404 if unknown."""
    if not raw:
        return None
    if not raw.isdigit() or int(raw) > INT_MAX:
        raise NotFound(f"no pipeline {raw[:20]!r}")
    return pipeline_or_404(int(raw))


def clone_values(p: Pipeline) -> dict[str, Any]:
    """The form filled from ``p``: its name + " (copy)", dataset folder, preset and every setting."""
    values: dict[str, Any] = {"name": f"{p.name} (copy)"[:200],
                              "dataset_root": display_dataset_root(p.dataset_root, settings().data_dir),
                              "preset": (p.config or {}).get("preset", DEFAULT_PRESET)}
    try:
        values.update(flatten(PipelineConfig.model_validate(p.config)))
    except ValidationError:
        flash(f"Pipeline {p.id}'s stored configuration no longer validates; the form shows its preset.", "error")
    return values


def hidden_settings(p: Pipeline) -> dict[str, Any]:
    """The source's settings that have no form field (kept as they were by a clone)."""
    shown = set(form_field_names()) | {"preset"}
    return {k: v for k, v in flat_config(p.config or {}).items() if k not in shown}


@bp.route("/pipelines/new", methods=["GET", "POST"])
def new_pipeline() -> ResponseReturnValue:
    source = clone_source(request.values.get("from"))
    if request.method == "GET":
        values = {"name": "", "dataset_root": request.args.get("dataset_root", ""), "preset": DEFAULT_PRESET,
                  **presets_for_form()[DEFAULT_PRESET]}
        if source is not None:
            values.update(clone_values(source))
        return _form_page({k: str(v) for k, v in values.items()}, {}, source=source)
    form = request.form
    values = {k: form.get(k, "") for k in ("name", "dataset_root", "preset", *form_field_names())}
    # a clone keeps the source's settings that the form does not show; the form's values win
    overrides = {**(hidden_settings(source) if source is not None else {}),
                 **{k: form[k] for k in form_field_names() if k in form}}
    try:
        sub = validate(settings(), name=form.get("name"), dataset_root=form.get("dataset_root"),
                       preset=form.get("preset"), overrides=overrides)
    except ConfigErrors as exc:
        return _form_page(values, exc.fields, 422, source=source)
    pipeline = jobs.submit(db_session(), settings(), name=sub.name, dataset_root=sub.dataset_root, config=sub.config,
                           submitted_by="web")
    flash(f"Pipeline {pipeline.id} submitted.")
    return redirect(url_for("pages.pipeline", pipeline_id=pipeline.id))


@bp.get("/pipelines/<int:pipeline_id>")
def pipeline(pipeline_id: int) -> ResponseReturnValue:
    p = pipeline_or_404(pipeline_id)
    session = db_session()
    stages = queries.stages_of(session, p.id)
    progress = queries.progress_for(session, [p.id])[p.id]
    usage = pipeline_usage(session, p.id)
    return render_template(
        "pipeline.html", p=p, stages=stages, columns=graph_columns(stages), progress=progress,
        usage=usage, stage_disk={d["kind"]: d for d in usage["stages"]},
        dataset=display_dataset_root(p.dataset_root, settings().data_dir), rerunnable=RERUNNABLE,
        has_evaluate=any(s.kind == "evaluate" for s in stages), can_benchmark=can_benchmark(stages),
        config_json=json.dumps(p.config, indent=2), unserved=unserved_queues(stages),
        fan_out_units={s.kind: s.fan_out.unit for s in GRAPH if s.fan_out is not None},
    )


@bp.post("/pipelines/<int:pipeline_id>/cancel")
def cancel_pipeline(pipeline_id: int) -> ResponseReturnValue:
    p = pipeline_or_404(pipeline_id)
    try:
        jobs.cancel_pipeline(db_session(), p)
        flash(f"Pipeline {p.id} is being cancelled.")
    except Conflict as exc:
        flash(exc.description or "cannot cancel", "error")
    return redirect(url_for("pages.pipeline", pipeline_id=p.id))


@bp.get("/stages/<int:stage_id>")
def stage(stage_id: int) -> ResponseReturnValue:
    s = stage_or_404(stage_id)
    session = db_session()
    src = data_stage(s)
    artefacts = queries.artefacts_of(session, src.id)
    previews = [artefact_json(a, settings()) for a in artefacts if is_preview(a)]
    show_all = request.args.get("previews") == "all"
    videos, other = group_previews(previews, s.kind)
    listed = [artefact_json(a, settings()) for a in artefacts]
    return render_template(
        "stage.html", s=s, p=s.pipeline, info=stage_json(s), rerunnable=s.status in RERUNNABLE,
        artefacts=listed, artefact_groups=artefact_groups(listed),
        preview_videos=[v.as_json() for v in videos],
        previews=other if show_all else other[:PREVIEW_LIMIT],
        previews_total=len(other), show_all=show_all,
        failed_items=queries.failed_items(session, src.id), has_log=log_file(src) is not None,
        source=src if src is not s else None,
    )


@bp.route("/stages/<int:stage_id>/rerun", methods=["GET", "POST"])
def rerun(stage_id: int) -> ResponseReturnValue:
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


@bp.get("/disk")
def disk_page() -> ResponseReturnValue:
    session, cfg = db_session(), settings()
    modes = [
        {"key": "orphans", "title": "Orphan folders",
         "help": "Stage folders under the artefact root that no stage of this database names.",
         "plan": disk.gc_json(disk.gc_plan(session, cfg, False), cfg)},
        {"key": "intermediates", "title": "Intermediates of succeeded pipelines (and orphans)",
         "help": "Branch checkpoints, CAMs, crops and pseudo-GT; features, the STA model and results stay. "
                 "An identical pipeline then recomputes these stages instead of reusing them.",
         "plan": disk.gc_json(disk.gc_plan(session, cfg, True), cfg)},
    ]
    return render_template("disk.html", modes=modes)


@bp.post("/disk/gc")
def disk_gc() -> ResponseReturnValue:
    freed, done = disk.gc_run(db_session(), settings(), request.form.get("intermediates") == "1")
    flash(f"Deleted {len(done)} folder(s), freed {human_size(freed)}.")
    return redirect(url_for("pages.disk_page"))


@bp.get("/pipelines/<int:pipeline_id>/results")
def results(pipeline_id: int) -> ResponseReturnValue:
    p = pipeline_or_404(pipeline_id)
    ev = evaluation(db_session(), p, settings())
    r = ev.result
    return render_template("results.html", p=p, ev=ev, r=r, labels=METRIC_LABELS, lower=LOWER_IS_BETTER,
                           lower_labels=", ".join(METRIC_LABELS.get(m, m) for m in r.metrics if m in LOWER_IS_BETTER)
                           if r else "",
                           dataset=dataset_view(r) if r else None, ablation=ablation_view(r) if r else None,
                           per_video=per_video_rows(r) if r else [], bench=benchmark_view(db_session(), p))
