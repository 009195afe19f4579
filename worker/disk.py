"""Disk in the open: bytes per stage and pipeline, and the garbage collector (``stapipe gc``).

Usage comes from the artefact rows (every file a stage wrote, with its size, recorded when the
stage ends), so a page costs one grouped query and no directory walk. A reused stage owns no
bytes: its folder is the source stage's, counted once, in the source's pipeline.

What ``gc`` deletes — whole stage folders, never single files:
- ``orphan``: a stage folder ``<root>/<pipeline id>/<kind>`` that no stage row names as its
  output folder (pipelines removed from the database, stage folders of an earlier version). Only
  for ids up to the newest pipeline's: pointed at the wrong (or an empty) database, gc deletes nothing;
- ``intermediate`` (only with ``intermediates=True``): the folders of a *succeeded* pipeline's
  branch checkpoints, CAMs, crops and pseudo-GT. Kept: features (STA, prediction and the crop
  files read them), the STA model, predictions and evaluation. A later identical pipeline then
  recomputes those stages instead of reusing them (reuse needs intact files).
Never deleted: any folder that a stage of a pipeline that has not succeeded uses, its own or a
reused one (pending and running pipelines need their inputs; failed and cancelled ones can still
re-run a stage, which reads them). :func:`collect` re-checks each folder
against the database just before it moves it aside, so a pipeline submitted between the dry run and
the deletion keeps what it reuses. A deleted stage's artefact rows go with its folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db.models import Artefact, Pipeline, PipelineStatus, Stage
from sta_models.branches import BRANCHES

INTERMEDIATE_KINDS = ("cams_coarse", "crops", "cams_fine", "pseudo_gt",
                      *(f"train_{b}_{p}" for p in ("coarse", "fine") for b in BRANCHES))


# ---------------------------------------------------------------------------------------------
# usage


def stage_bytes(session: Session, stage_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
    """Recorded (bytes, files) per stage id, in one grouped query."""
    ids = list(stage_ids)
    if not ids:
        return {}
    rows = session.execute(select(Artefact.stage_id, func.coalesce(func.sum(Artefact.size), 0), func.count())
                           .where(Artefact.stage_id.in_(ids)).group_by(Artefact.stage_id))
    return {int(sid): (int(n), int(c)) for sid, n, c in rows}


def pipeline_usage(session: Session, pipeline_id: int) -> dict[str, Any]:
    """``{"bytes", "reused_bytes", "stages": [{"kind", "bytes", "files", "reused_from_id"}]}`` of one pipeline."""
    stages = list(session.scalars(select(Stage).where(Stage.pipeline_id == pipeline_id).order_by(Stage.position)))
    sizes = stage_bytes(session, [s.reused_from_id or s.id for s in stages])
    out: list[dict[str, Any]] = []
    own = reused = 0
    for s in stages:
        n, files = sizes.get(s.reused_from_id or s.id, (0, 0))
        out.append({"kind": s.kind, "bytes": n, "files": files, "reused_from_id": s.reused_from_id})
        if s.reused_from_id:
            reused += n
        else:
            own += n
    return {"bytes": own, "reused_bytes": reused, "stages": out}


# ---------------------------------------------------------------------------------------------
# garbage collection


@dataclass
class GcItem:
    """One folder gc would delete."""

    path: str
    bytes: int
    reason: str  # "orphan" | "intermediate"
    stage_id: int | None = None
    pipeline_id: int | None = None
    kind: str | None = None


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path``, each inode once (symlinks not followed; a hard link, such
    as a running stage's ``prev.weights.pt`` of ``best.pt``, is no second copy on the disk)."""
    seen: dict[tuple[int, int], int] = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def _key(path: str | Path) -> str:
    return str(Path(path).resolve())


def _in_use(session: Session) -> tuple[set[str], dict[str, int]]:
    """(folders a pipeline that has not succeeded uses, number of stage rows naming each folder)."""
    protected: set[str] = set()
    users: dict[str, int] = {}
    rows = session.execute(select(Stage.output_dir, Pipeline.status).join(Pipeline, Stage.pipeline_id == Pipeline.id))
    for output_dir, status in rows:
        if not output_dir:
            continue
        k = _key(output_dir)
        users[k] = users.get(k, 0) + 1
        if str(status) != str(PipelineStatus.SUCCEEDED):
            protected.add(k)
    return protected, users


def plan(session: Session, artefact_root: Path, *, intermediates: bool = False) -> list[GcItem]:
    """What :func:`collect` would delete now (the dry run)."""
    root = Path(artefact_root).resolve()
    protected, users = _in_use(session)
    items: list[GcItem] = []
    newest = session.scalar(select(func.max(Pipeline.id))) or 0
    if root.is_dir():
        for pdir in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
            if not pdir.name.isdigit() or int(pdir.name) > newest:
                continue  # not a pipeline this database created: another installation's, or a wrong database
            for sdir in sorted(p for p in pdir.iterdir() if p.is_dir() and not p.is_symlink()):
                k = _key(sdir)
                if k not in users and k not in protected:
                    items.append(GcItem(str(sdir), folder_bytes(sdir), "orphan"))
    if intermediates:
        rows = session.execute(select(Stage.id, Stage.pipeline_id, Stage.kind, Stage.output_dir)
                               .join(Pipeline, Stage.pipeline_id == Pipeline.id)
                               .where(Pipeline.status == str(PipelineStatus.SUCCEEDED),
                                      Stage.kind.in_(INTERMEDIATE_KINDS), Stage.reused_from_id.is_(None)))
        for sid, pid, kind, output_dir in rows:
            if not output_dir or not Path(output_dir).is_dir():
                continue
            k = _key(output_dir)
            if k in protected or not k.startswith(str(root) + os.sep):
                continue  # a pipeline that may still run uses it, or it is not under the root
            items.append(GcItem(k, folder_bytes(Path(k)), "intermediate", sid, pid, kind))
    return items


def collect(session: Session, artefact_root: Path, items: list[GcItem]) -> tuple[int, list[GcItem]]:
    """Delete ``items`` (from :func:`plan`) that are still safe to delete; (bytes freed, items deleted). Commits."""
    protected, users = _in_use(session)
    done: list[GcItem] = []
    freed = 0
    for item in items:
        k = _key(item.path)
        if k in protected or (item.reason == "orphan" and users.get(k, 0)):
            continue
        src = Path(k)
        if not src.is_dir():
            continue
        trash = src.with_name(f".gc-{src.name}-{os.getpid()}")
        os.replace(src, trash)  # atomic: from here on nothing sees the folder
        if item.stage_id is not None:
            session.execute(delete(Artefact).where(Artefact.stage_id == item.stage_id))
            session.commit()
        shutil.rmtree(trash, ignore_errors=True)
        freed += item.bytes
        done.append(item)
    for pdir in {Path(i.path).parent for i in done}:
        with contextlib.suppress(OSError):
            pdir.rmdir()  # the pipeline's folder, once empty
    return freed, done


def as_json(items: list[GcItem]) -> dict[str, Any]:
    return {"bytes": sum(i.bytes for i in items), "items": [asdict(i) for i in items]}
