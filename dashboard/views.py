"""JSON shapes of pipelines, stages and artefacts, shared by the API and the pages' scripts.

Server paths never leave the server: datasets are shown relative to the data root, artefacts
relative to the artefact root, and log files only through the log endpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import url_for

from db.models import Artefact, Pipeline, Stage, StageStatus
from stapipe_settings import Settings
from worker.progress import progress_text

from .formatting import duration_s, iso
from .paths import display_dataset_root
from .queries import Progress

RERUNNABLE = (str(StageStatus.FAILED), str(StageStatus.CANCELLED))
PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".webm")


def progress_json(p: Progress) -> dict[str, int]:
    return dict(vars(p))


def pipeline_json(p: Pipeline, progress: Progress, settings: Settings) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "dataset_root": display_dataset_root(p.dataset_root, settings.data_dir),
        "status": p.status,
        "preset": (p.config or {}).get("preset"),
        "submitted_by": p.submitted_by,
        "created_at": iso(p.created_at),
        "started_at": iso(p.started_at),
        "finished_at": iso(p.finished_at),
        "duration_s": duration_s(p.started_at, p.finished_at),
        "reused_from_id": p.reused_from_id,
        "error_summary": p.error_summary,
        "progress": progress_json(progress),
        "url": url_for("pages.pipeline", pipeline_id=p.id),
    }


def stage_json(s: Stage) -> dict[str, Any]:
    return {
        "id": s.id,
        "pipeline_id": s.pipeline_id,
        "kind": s.kind,
        "status": s.status,
        "queue": s.queue,
        "depends_on": list(s.depends_on or []),
        "attempts": s.attempts,
        "worker_host": s.worker_host,
        "queued_at": iso(s.queued_at),
        "started_at": iso(s.started_at),
        "finished_at": iso(s.finished_at),
        "duration_s": duration_s(s.started_at, s.finished_at) if s.status != StageStatus.PENDING else None,
        "error_summary": s.error_summary,
        "reused_from_id": s.reused_from_id,
        "cancel_requested": s.cancel_requested,
        "progress": stage_progress(s),
        "summary": s.summary,
        "warnings": list((s.summary or {}).get("warnings") or []) if isinstance(s.summary, dict) else [],
        "rerunnable": s.status in RERUNNABLE,
        "url": url_for("pages.stage", stage_id=s.id),
    }


def _pipeline_config(s: Stage) -> dict[str, Any] | None:
    pipeline: Pipeline | None = s.pipeline  # None for a Stage not (yet) attached to a pipeline
    return pipeline.config if pipeline is not None else None


def stage_progress(s: Stage) -> dict[str, Any]:
    """Counters plus ``text`` ("epoch 3/6 · batch 40/88"), the phrase every page shows."""
    return {"done": s.progress_done, "failed": s.progress_failed, "total": s.progress_total,
            "what": s.progress_what,
            "text": progress_text(s.kind, _pipeline_config(s), s.progress_done,
                                  s.progress_total, s.progress_what, s.progress_failed)}


def relative_artefact_path(a: Artefact, settings: Settings) -> str:
    try:
        return str(Path(a.path).resolve().relative_to(settings.artefact_dir))
    except (ValueError, OSError):
        return Path(a.path).name


def artefact_json(a: Artefact, settings: Settings) -> dict[str, Any]:
    return {
        "id": a.id,
        "stage_id": a.stage_id,
        "kind": a.kind,
        "name": Path(a.path).name,
        "path": relative_artefact_path(a, settings),
        "size": a.size,
        "sha256": a.sha256,
        "created_at": iso(a.created_at),
        "url": url_for("files.artefact_file", artefact_id=a.id),
    }


def is_preview(a: Artefact) -> bool:
    return a.path.lower().endswith(PREVIEW_SUFFIXES)


def is_video(a: Artefact) -> bool:
    return a.path.lower().endswith(VIDEO_SUFFIXES)


def graph_columns(stages: list[Stage]) -> list[list[Stage]]:
    """Stages grouped by depth in the dependency graph (column k = longest path from a root)."""
    by_kind = {s.kind: s for s in stages}
    depth: dict[str, int] = {}

    def d(kind: str, seen: frozenset[str] = frozenset()) -> int:
        if kind in depth:
            return depth[kind]
        deps = [k for k in (by_kind[kind].depends_on or []) if k in by_kind and k not in seen]
        depth[kind] = 1 + max((d(k, seen | {kind}) for k in deps), default=-1)
        return depth[kind]

    for s in stages:
        d(s.kind)
    columns: list[list[Stage]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for s in stages:
        columns[depth[s.kind]].append(s)
    return columns
