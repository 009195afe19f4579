"""The dashboard's only door into the job system (``worker.orchestration``).

Imported lazily so read-only pages never import Celery. State errors of the job system
(``OrchestrationError``: e.g. re-running a stage whose downstream is still running) become 409.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy.orm import Session
from werkzeug.exceptions import Conflict

from db.models import FINAL_STATES, Pipeline, Stage
from stapipe_settings import Settings

from .views import RERUNNABLE

T = TypeVar("T")
FINISHED_PIPELINE = ("succeeded", "failed", "cancelled")


def _orchestration() -> Any:
    from worker import orchestration

    return orchestration


@contextmanager
def _conflicts(session: Session) -> Iterator[None]:
    orch = _orchestration()
    try:
        yield
    except orch.OrchestrationError as exc:
        session.rollback()
        raise Conflict(str(exc)) from None


def _call(session: Session, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    with _conflicts(session):
        result = fn(session, *args, **kwargs)
    session.commit()
    return result


def submit(session: Session, settings: Settings, *, name: str, dataset_root: str, config: Any,
           submitted_by: str) -> Pipeline:
    """Create the pipeline (stages reused where inputs are unchanged) and enqueue what can run."""
    return _call(
        session, _orchestration().submit_pipeline, name=name, dataset_root=dataset_root, config=config,
        submitted_by=submitted_by, artefact_root=settings.artefact_dir, log_root=settings.log_dir,
    )


def cancel_pipeline(session: Session, pipeline: Pipeline) -> None:
    if pipeline.status in FINISHED_PIPELINE:
        raise Conflict(f"pipeline {pipeline.id} already finished ({pipeline.status})")
    _call(session, _orchestration().cancel_pipeline, pipeline.id)
    session.refresh(pipeline)


def cancel_stage(session: Session, stage: Stage) -> None:
    if stage.status in {str(s) for s in FINAL_STATES}:
        raise Conflict(f"stage {stage.id} already finished ({stage.status})")
    _call(session, _orchestration().cancel_stage, stage.id)
    session.refresh(stage)


def rerun_plan(session: Session, stage: Stage) -> list[Stage]:
    """The stages a re-run of ``stage`` sends back to pending (it first, then downstream);
    stages reused from an earlier run stay reused, so they are not listed."""
    with _conflicts(session):
        plan = list(_orchestration().rerun_plan(session, stage.id))
    return [s for s in plan if s.status != "reused"]


def rerun(session: Session, stage: Stage) -> list[Stage]:
    if stage.status not in RERUNNABLE:
        raise Conflict(f"only failed or cancelled stages can be re-run; stage {stage.id} is {stage.status}")
    return list(_call(session, _orchestration().rerun_stage, stage.id))
