"""Artefact rows: one per file a stage leaves in its folder (path, size, sha256, kind)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Artefact, utcnow
from db.upsert import upsert
from sta_models.filehash import sha256_file
from worker.stage_graph import StageSpec


def upsert_artefact(session: Session, stage_id: int, spec: StageSpec, path: Path, size: int, sha256: str) -> None:
    """One row per (stage, path), idempotent across attempts; its kind from the stage's declaration."""
    upsert(session, Artefact, {"stage_id": stage_id, "kind": spec.artefact_kind(path), "path": str(path),
                               "size": size, "sha256": sha256, "created_at": utcnow()},
           conflict=("stage_id", "path"), update=("size", "sha256"))


def record_artefact(session: Session, stage_id: int, spec: StageSpec, path: Path) -> None:
    """Upsert one artefact row (path, size, sha256) — idempotent across attempts."""
    upsert_artefact(session, stage_id, spec, path, path.stat().st_size, sha256_file(path))


def record_folder(session: Session, stage_id: int, spec: StageSpec, folder: Path) -> int:
    """Record every file under ``folder`` (temporary ``*.tmp`` files excluded); drop rows of files
    that are gone. Returns the number of files."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith((".tmp", ".partial")))
    keep = {str(p) for p in files}
    for art in session.scalars(select(Artefact).where(Artefact.stage_id == stage_id)):
        if art.path not in keep:
            session.delete(art)
    for p in files:
        record_artefact(session, stage_id, spec, p)
    return len(files)


__all__ = ["upsert_artefact", "record_artefact", "record_folder"]
