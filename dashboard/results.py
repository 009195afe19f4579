"""The evaluate stage's result for the Results page, the results API and the pipelines list.

``metrics.json`` is read only through :func:`sta_models.evaluation_result.load_evaluation` (one
versioned schema; an unknown version or a damaged file becomes a one-line ``problem``). Strip
images and overlay videos are served as the stage's artefacts, by id.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from db.models import Artefact, Pipeline, Stage
from sta_models import evaluation_result as R
from stapipe_settings import Settings

OVERLAY_SUFFIX = "_overlay"


@dataclass
class Evaluation:
    stage: Stage | None = None
    metrics: dict[str, Any] | None = None  # the metrics.json artefact (JSON shape)
    result: R.EvaluationResult | None = None
    problem: str | None = None
    videos: list[dict[str, Any]] = field(default_factory=list)  # overlay videos (artefact JSON)
    strips: dict[str, dict[str, Any]] = field(default_factory=dict)  # video -> strip JSON with its url
    overlays: dict[str, str] = field(default_factory=dict)  # video -> overlay url


def _video_of_overlay(a: Artefact) -> str:
    stem = Path(a.path).stem
    return stem[: -len(OVERLAY_SUFFIX)] if stem.endswith(OVERLAY_SUFFIX) else stem


def evaluation(session: Session, pipeline: Pipeline, settings: Settings) -> Evaluation:
    """The evaluate stage's typed result, strips and overlay videos (empty until it has produced them)."""
    from . import queries
    from .paths import safe_artefact_file
    from .views import artefact_json, is_video

    ev = Evaluation(next((s for s in queries.stages_of(session, pipeline.id) if s.kind == "evaluate"), None))
    if ev.stage is None:
        return ev
    by_rel: dict[str, Artefact] = {}
    out_dir = Path(ev.stage.output_dir or "")
    for a in queries.artefacts_of(session, ev.stage.reused_from_id or ev.stage.id):  # reused: the source's
        with contextlib.suppress(ValueError):  # artefacts outside the stage folder have no relative name
            by_rel[Path(a.path).relative_to(out_dir).as_posix()] = a
        if Path(a.path).name == "metrics.json" and ev.metrics is None:
            path = safe_artefact_file(a.path, settings.artefact_dir)
            if path is None:
                ev.problem = "metrics.json is outside the artefact folder"
                continue
            ev.metrics = artefact_json(a, settings)
            try:
                ev.result = R.load_evaluation(path)
            except R.EvaluationFileError as exc:
                ev.problem = str(exc)
        elif is_video(a):
            j = artefact_json(a, settings)
            ev.videos.append(j)
            ev.overlays[_video_of_overlay(a)] = j["url"]
    if ev.result is not None:
        for s in ev.result.strips:
            strip_file = by_rel.get(s.file)
            if strip_file is not None:
                ev.strips[s.video] = {**vars(s), "url": artefact_json(strip_file, settings)["url"]}
    return ev


def evaluation_json(ev: Evaluation) -> dict[str, Any] | None:
    """The API's ``evaluation`` key (docs/architecture.md, "Evaluation result"), or None."""
    r = ev.result
    if r is None:
        return None
    return {
        "schema_version": r.schema_version,
        "metrics": list(r.metrics),
        "lower_is_better": sorted(R.LOWER_IS_BETTER & set(r.metrics)),
        "dataset": [vars(m) for m in r.dataset],
        "videos": [{**vars(v), "strip_url": ev.strips.get(v.video, {}).get("url"),
                    "overlay_url": ev.overlays.get(v.video)} for v in r.videos],
        "ablation": None if r.ablation is None else {
            "metrics": list(r.ablation.metrics), "frames": r.ablation.frames,
            "rows": [vars(row) for row in r.ablation.rows]},
        "strips": list(ev.strips.values()),
    }


def _metrics_file(where: Path | Stage) -> Path | None:
    if isinstance(where, Stage):
        return Path(where.output_dir) / "metrics.json" if where.output_dir else None
    where = Path(where)
    for candidate in (where / "metrics.json", where / "evaluate" / "metrics.json", where):
        if candidate.is_file():
            return candidate
    return None


def headline(where: Path | Stage | None) -> dict[str, float] | None:
    """STA's dataset values of a pipeline, or None when there is no readable result; undefined
    values are left out. ``where`` is the evaluate stage (its stored summary, no file read — what
    the pipelines list uses), the pipeline's folder, its evaluate folder or a metrics.json path."""
    if where is None:
        return None
    if isinstance(where, Stage):
        if where.status not in ("succeeded", "reused"):
            return None
        sta_values = ((where.summary or {}).get("metrics") or {}).get("sta")
        if isinstance(sta_values, dict):
            return {k: float(v) for k, v in sta_values.items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
    path = _metrics_file(where)
    if path is None:
        return None
    try:
        sta = R.load_evaluation(path).method("sta")
    except R.EvaluationFileError:
        return None
    if sta is None:
        return None
    return {k: v for k, v in sta.values.items() if v is not None}


@dataclass
class TableView:
    """What the template needs of one results table: rows of (method, label, values) and the best."""

    metrics: list[str]
    rows: list[Any]
    best: dict[str, set[str]]


def dataset_view(r: R.EvaluationResult) -> TableView:
    return TableView(list(r.metrics), r.dataset, {m: R.best_methods(r.dataset, m) for m in r.metrics})


def ablation_view(r: R.EvaluationResult) -> TableView | None:
    if r.ablation is None:
        return None
    rows = r.ablation.rows
    return TableView(list(r.ablation.metrics), rows, {m: R.best_methods(rows, m) for m in r.ablation.metrics})


def per_video_rows(r: R.EvaluationResult) -> list[dict[str, Any]]:
    """One row per video: every method's values side by side (``values[method][metric]``), worst STA CC first."""
    rows: dict[str, dict[str, Any]] = {}
    for v in r.videos:
        row = rows.setdefault(v.video, {"video": v.video, "values": {}, "frames": {}})
        row["values"][v.method] = v.values
        row["frames"][v.method] = (v.frames_scored, v.frames_missing, v.frames_nan)

    def key(row: dict[str, Any]) -> tuple[bool, float]:  # undefined last, as the page's sorting does
        cc = row["values"].get("sta", {}).get("cc")
        return (cc is None, cc if cc is not None else 0.0)

    return sorted(rows.values(), key=key)


def result_tables(r: R.EvaluationResult | None) -> list[dict[str, Any]]:
    """The API's older ``tables`` key, now derived from the typed result: dataset and per-video rows."""
    if r is None:
        return []
    cols = list(r.metrics)
    return [
        {"title": "dataset", "columns": cols, "rows": [[m.label, [m.values.get(c) for c in cols]] for m in r.dataset]},
        {"title": "videos", "columns": cols,
         "rows": [[f"{v.video} · {v.method}", [v.values.get(c) for c in cols]] for v in r.videos]},
    ]
