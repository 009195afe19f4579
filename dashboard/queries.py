"""Read queries for pages and the API, shaped so that each page costs a fixed number of queries.

The pipelines list aggregates stage counts and extraction progress for the whole page in two
grouped queries (no N+1); metrics "since epoch N" walk the unique (stage_id, epoch) index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.models import DONE_STATES, Artefact, EpochMetric, ExtractionItem, Pipeline, Stage, StageStatus
from worker.stages import GRAPH

METRIC_PAGE_MAX = 5000


@dataclass
class Progress:
    stages_done: int = 0
    stages_total: int = 0
    stages_failed: int = 0
    stages_reused: int = 0
    videos_done: int = 0
    videos_failed: int = 0
    videos_total: int = 0


@dataclass
class PipelinePage:
    items: list[tuple[Pipeline, Progress]] = field(default_factory=list)
    page: int = 1
    per_page: int = 20
    total: int = 0

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def progress_for(session: Session, pipeline_ids: list[int]) -> dict[int, Progress]:
    """Stage counts and fan-out (extraction) progress for several pipelines at once."""
    out = {pid: Progress() for pid in pipeline_ids}
    if not pipeline_ids:
        return out
    done = [str(s) for s in DONE_STATES]
    rows = session.execute(
        select(
            Stage.pipeline_id,
            func.count(),
            func.sum(case((Stage.status.in_(done), 1), else_=0)),
            func.sum(case((Stage.status == str(StageStatus.FAILED), 1), else_=0)),
            func.sum(case((Stage.reused_from_id.is_not(None), 1), else_=0)),
        )
        .where(Stage.pipeline_id.in_(pipeline_ids))
        .group_by(Stage.pipeline_id)
    )
    for pid, total, n_done, n_failed, n_reused in rows:
        p = out[pid]
        p.stages_total, p.stages_done = int(total), int(n_done or 0)
        p.stages_failed, p.stages_reused = int(n_failed or 0), int(n_reused or 0)
    extract = session.execute(
        select(Stage.pipeline_id, Stage.progress_done, Stage.progress_failed, Stage.progress_total).where(
            Stage.pipeline_id.in_(pipeline_ids), Stage.kind.in_(GRAPH.fan_out_kinds)
        )
    )
    for pid, n_done, n_failed, n_total in extract:
        p = out[pid]
        p.videos_done, p.videos_failed, p.videos_total = n_done or 0, n_failed or 0, n_total or 0
    return out


def list_pipelines(session: Session, page: int, per_page: int) -> PipelinePage:
    total = session.scalar(select(func.count()).select_from(Pipeline)) or 0
    pipelines = list(
        session.scalars(
            select(Pipeline)
            .order_by(Pipeline.created_at.desc(), Pipeline.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
    )
    progress = progress_for(session, [p.id for p in pipelines])
    return PipelinePage([(p, progress[p.id]) for p in pipelines], page, per_page, total)


def stages_of_kind(session: Session, pipeline_ids: list[int], kind: str) -> dict[int, Stage]:
    """One stage kind of several pipelines in one query (e.g. each listed pipeline's evaluate)."""
    if not pipeline_ids:
        return {}
    rows = session.scalars(select(Stage).where(Stage.pipeline_id.in_(pipeline_ids), Stage.kind == kind))
    return {s.pipeline_id: s for s in rows}


def stage_warnings(session: Session, pipeline_ids: list[int]) -> dict[int, list[str]]:
    """Pipeline id → the health warnings its stages stored (``summary["warnings"]``), one line each."""
    out: dict[int, list[str]] = {}
    if not pipeline_ids:
        return out
    rows = session.execute(select(Stage.pipeline_id, Stage.kind, Stage.summary)
                           .where(Stage.pipeline_id.in_(pipeline_ids)).order_by(Stage.id))
    for pid, kind, summary in rows:
        for w in (summary or {}).get("warnings") or []:
            out.setdefault(pid, []).append(f"{kind}: {w.get('message', w) if isinstance(w, dict) else w}")
    return out


def get_pipeline(session: Session, pipeline_id: int) -> Pipeline | None:
    return session.get(Pipeline, pipeline_id)


def stages_of(session: Session, pipeline_id: int) -> list[Stage]:
    return list(session.scalars(select(Stage).where(Stage.pipeline_id == pipeline_id).order_by(Stage.position)))


def get_stage(session: Session, stage_id: int) -> Stage | None:
    return session.get(Stage, stage_id)


def metrics_since(session: Session, stage_id: int, since: int, limit: int) -> list[EpochMetric]:
    """Epochs after ``since`` in order, at most ``limit`` (served by the (stage_id, epoch) index)."""
    return list(
        session.scalars(
            select(EpochMetric)
            .where(EpochMetric.stage_id == stage_id, EpochMetric.epoch > since)
            .order_by(EpochMetric.epoch)
            .limit(limit)
        )
    )


def artefacts_of(session: Session, stage_id: int) -> list[Artefact]:
    return list(session.scalars(select(Artefact).where(Artefact.stage_id == stage_id).order_by(Artefact.path)))


def get_artefact(session: Session, artefact_id: int) -> Artefact | None:
    return session.get(Artefact, artefact_id)


def failed_items(session: Session, stage_id: int, limit: int = 200) -> list[ExtractionItem]:
    return list(
        session.scalars(
            select(ExtractionItem)
            .where(ExtractionItem.stage_id == stage_id, ExtractionItem.status == "failed")
            .order_by(ExtractionItem.video_id)
            .limit(limit)
        )
    )


def metric_row(m: EpochMetric) -> dict[str, Any]:
    return {
        "epoch": m.epoch,
        "train_loss": m.train_loss,
        "val_loss": m.val_loss,
        "val_accuracy": m.val_accuracy,
        "lr": m.lr,
        "seconds": m.seconds,
        "samples_per_s": m.samples_per_s,
        "extra": {k: v for k, v in (m.extra or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)},
    }
