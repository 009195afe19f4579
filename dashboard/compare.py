"""Comparing pipelines: headline results side by side, the config keys that differ, and the curves
of the same training stage overlaid. ``/compare?pipelines=1,2`` (page) and ``/api/v1/compare``."""

from __future__ import annotations

import math
from typing import Any

from flask import Blueprint, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session
from werkzeug.exceptions import NotFound

from db.models import Pipeline, Stage
from sta_models.metric_table import LABELS as METRIC_LABELS
from sta_models.metric_table import LOWER_IS_BETTER
from sta_models.metric_table import NAMES as HEADLINE_METRICS

from . import queries
from .api import settings
from .database import db_session
from .errors import FieldErrors
from .results import headline
from .views import pipeline_json

bp = Blueprint("compare", __name__)
MAX_PIPELINES = 8


def pipeline_ids_arg() -> list[int]:
    """``?pipelines=1,2`` or ``?pipelines=1&pipelines=2`` (the list's checkboxes); 2 to 8 distinct ids."""
    raw = [part for value in request.args.getlist("pipelines") for part in value.split(",") if part.strip()]
    ids: list[int] = []
    for part in raw:
        if not part.strip().isdigit():
            raise FieldErrors({"pipelines": f"{part.strip()!r} is not a pipeline id"})
        if int(part) not in ids:
            ids.append(int(part))
    if not 2 <= len(ids) <= MAX_PIPELINES:
        raise FieldErrors({"pipelines": f"tick 2 to {MAX_PIPELINES} pipelines to compare (got {len(ids)})"},
                          "Choose the pipelines to compare.")
    return ids


def flat_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys of a config dict (lists stay one value)."""
    if not isinstance(config, dict):
        return {prefix: config}
    out: dict[str, Any] = {}
    for k, v in config.items():
        out.update(flat_config(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_diff(configs: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """(key, value per pipeline) for the keys whose values are not all equal, in key order."""
    flats = [flat_config(c or {}) for c in configs]
    keys = sorted(set().union(*flats))
    rows = []
    for key in keys:
        values = [f.get(key) for f in flats]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, values))
    return rows


def best_index(values: list[float | None], metric: str) -> int | None:
    """The pipeline with the best value, or None when fewer than two have one or the best is tied
    (identical results: none is better, so none is marked)."""
    nums = [(v, i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(nums) < 2:
        return None
    value, index = min(nums) if metric in LOWER_IS_BETTER else max(nums)
    return None if sum(v == value for v, _ in nums) > 1 else index


def _curves(session: Session, pipelines: list[Pipeline]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Training stage kind → pipeline id → epochs (a reused stage shows the epochs it reuses)."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for p in pipelines:
        for s in queries.stages_of(session, p.id):
            if not s.kind.startswith("train_"):
                continue
            src = session.get(Stage, s.reused_from_id) if s.reused_from_id else s
            rows = queries.metrics_since(session, (src or s).id, 0, queries.METRIC_PAGE_MAX)
            out.setdefault(s.kind, {})[str(p.id)] = [queries.metric_row(m) for m in rows]
    return out


def comparison(session: Session, ids: list[int]) -> dict[str, Any]:
    pipelines = []
    for pid in ids:
        p = queries.get_pipeline(session, pid)
        if p is None:
            raise NotFound(f"no pipeline {pid}")
        pipelines.append(p)
    evaluate = queries.stages_of_kind(session, ids, "evaluate")
    heads = [headline(evaluate.get(p.id)) for p in pipelines]
    metrics = [m for m in HEADLINE_METRICS if any(h and m in h for h in heads)]
    progress = queries.progress_for(session, ids)
    diff = config_diff([p.config for p in pipelines])
    datasets = [p.dataset_root for p in pipelines]
    return {
        "pipelines": [{**pipeline_json(p, progress[p.id], settings()), "headline": h} for p, h in zip(
            pipelines, heads, strict=True)],
        "metrics": metrics,
        "results": [{"metric": m, "label": METRIC_LABELS.get(m, m), "lower_is_better": m in LOWER_IS_BETTER,
                     "values": [h.get(m) if h else None for h in heads],
                     "best": best_index([h.get(m) if h else None for h in heads], m)} for m in metrics],
        "config_diff": [{"key": k, "values": v} for k, v in diff],
        "same_dataset": len(set(datasets)) == 1,
        "curves": _curves(session, pipelines),
    }


@bp.get("/compare")
def compare_page() -> ResponseReturnValue:
    body = comparison(db_session(), pipeline_ids_arg())
    return render_template("compare.html", c=body, labels=METRIC_LABELS)


@bp.get("/api/v1/compare")
def compare_api() -> ResponseReturnValue:
    return jsonify(comparison(db_session(), pipeline_ids_arg()))
