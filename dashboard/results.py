"""Turning the evaluate stage's ``metrics.json`` into tables, whatever its exact nesting.

The evaluation writes per-dataset and per-video scores; rather than hard-coding one layout, any
mapping of names to flat numeric records becomes a table (rows = names, columns = metrics), and
any list of such records with a name-like key does too. Unknown shapes are simply not tabulated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from db.models import Pipeline, Stage
from worker.settings import Settings

MAX_BYTES = 20 * 1024 * 1024
NAME_KEYS = ("video_id", "video", "dataset", "name", "key", "id")


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[str, list[Any]]]


def _numeric(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_record(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and any(_numeric(x) for x in v.values()) and all(
        _numeric(x) or x is None or isinstance(x, str) for x in v.values()
    )


def _columns(records: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in records:
        for k, v in r.items():
            if k not in cols and (_numeric(v) or v is None):
                cols.append(k)
    return cols


def _title(path: list[str]) -> str:
    return " / ".join(path) if path else "results"


def tables_from(obj: Any, path: list[str] | None = None) -> list[Table]:
    path = path or []
    tables: list[Table] = []
    if isinstance(obj, dict):
        records = {k: v for k, v in obj.items() if _is_record(v)}
        if records and len(records) == len(obj):
            cols = _columns(list(records.values()))
            tables.append(Table(_title(path), cols, [(k, [r.get(c) for c in cols]) for k, r in records.items()]))
            return tables
        if _is_record(obj) and not path:
            cols = _columns([obj])
            tables.append(Table("results", cols, [("all", [obj.get(c) for c in cols])]))
            return tables
        for k, v in obj.items():
            tables.extend(tables_from(v, [*path, str(k)]))
    elif isinstance(obj, list) and obj and all(_is_record(r) for r in obj):
        name_key = next((k for k in NAME_KEYS if all(k in r for r in obj)), None)
        recs = [{k: v for k, v in r.items() if k != name_key} for r in obj]
        cols = _columns(recs)
        rows = [(str(r[name_key]) if name_key else str(i + 1), [rec.get(c) for c in cols]) for i, (r, rec) in
                enumerate(zip(obj, recs, strict=True))]
        tables.append(Table(_title(path), cols, rows))
    return tables


def load_tables(path: Path) -> tuple[list[Table], str | None]:
    """(tables, problem) — problem is a short user-facing message when the file can't be used."""
    try:
        if path.stat().st_size > MAX_BYTES:
            return [], "metrics.json is too large to show"
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [], "metrics.json could not be read"
    return tables_from(data), None


@dataclass
class Evaluation:
    stage: Stage | None = None
    metrics: dict[str, Any] | None = None  # the metrics.json artefact (JSON shape)
    tables: list[Table] = field(default_factory=list)
    problem: str | None = None
    videos: list[dict[str, Any]] = field(default_factory=list)


def evaluation(session: Session, pipeline: Pipeline, settings: Settings) -> Evaluation:
    """The evaluate stage's metrics tables and overlay videos (empty until it has produced them)."""
    from . import queries
    from .paths import safe_artefact_file
    from .views import artefact_json, is_video

    ev = Evaluation(next((s for s in queries.stages_of(session, pipeline.id) if s.kind == "evaluate"), None))
    if ev.stage is None:
        return ev
    for a in queries.artefacts_of(session, ev.stage.reused_from_id or ev.stage.id):  # reused: the source's
        if Path(a.path).name == "metrics.json" and ev.metrics is None:
            path = safe_artefact_file(a.path, settings.artefact_dir)
            if path is not None:
                ev.metrics = artefact_json(a, settings)
                ev.tables, ev.problem = load_tables(path)
        elif is_video(a):
            ev.videos.append(artefact_json(a, settings))
    return ev


# --- headline numbers (TEMPORARY adapter by the "dash" engineer; the "results" engineer's
# evaluation_result module replaces the parsing below at merge, same name and signature) ---------

HEADLINE_METRICS = ("cc", "nss", "sim", "kld", "auc_j", "sauc")


def _finite_values(values: Any) -> dict[str, float] | None:
    import math

    if not isinstance(values, dict):
        return None
    out = {k: float(v) for k, v in values.items() if _numeric(v) and math.isfinite(float(v))}
    return out or None


def headline(source: Stage | Path | str | None) -> dict[str, float] | None:
    """STA's dataset-level metric values of one pipeline (``{"cc": 0.81, "nss": 2.4, ...}``), or None
    before it has any. ``source`` is the evaluate stage (its stored summary, no file read — what
    the pipelines list uses) or the pipeline's artefact folder / a metrics.json path."""
    if source is None:
        return None
    if isinstance(source, Stage):
        if source.status not in ("succeeded", "reused"):
            return None
        return _finite_values(((source.summary or {}).get("metrics") or {}).get("sta"))
    path = Path(source)
    for candidate in (path / "evaluate" / "metrics.json", path / "metrics.json", path):
        if candidate.is_file():
            path = candidate
            break
    else:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data.get("dataset"), list):  # the versioned schema (sta_models.evaluation_result)
        row = next((r for r in data["dataset"] if isinstance(r, dict) and r.get("method") == "sta"), {})
        return _finite_values(row.get("values"))
    return _finite_values(((data.get("reports") or {}).get("sta") or {}).get("dataset"))
