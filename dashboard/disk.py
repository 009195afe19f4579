"""Disk on the dashboard: usage per pipeline and stage, the estimate before submitting, gc.

Thin wrappers over ``worker.disk`` and ``sta_models.disk_estimate`` that keep server paths
inside the server (gc folders are shown relative to the artefact root).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from sta_models.ave import load_dataset
from sta_models.config import PipelineConfig
from sta_models.disk_estimate import DatasetSize, estimate
from stapipe_settings import Settings
from worker import disk


def estimate_json(config: PipelineConfig, dataset_root: str) -> dict[str, Any]:
    """The estimate for a validated submission: bytes per stage, total, and what it was based on."""
    ds = load_dataset(dataset_root, seed=config.split_seed)
    size = DatasetSize.of_rows(ds.rows, ds.test)
    stages = estimate(config, size)
    keep_all = estimate(config, size, checkpoints="today")
    return {"bytes": sum(stages.values()), "stages": stages, "bytes_keeping_all_checkpoints": sum(keep_all.values()),
            "dataset": {"videos": size.videos, "video_seconds": size.video_seconds, "rows": size.rows,
                        "event_seconds": size.event_seconds}}


def gc_json(items: list[disk.GcItem], settings: Settings) -> dict[str, Any]:
    root = settings.artefact_dir.resolve()
    out = disk.as_json(items)
    for item in out["items"]:
        try:
            item["path"] = str(Path(item["path"]).resolve().relative_to(root))
        except ValueError:
            item["path"] = Path(item["path"]).name
    return out


def gc_plan(session: Session, settings: Settings, intermediates: bool) -> list[disk.GcItem]:
    return disk.plan(session, settings.artefact_dir, intermediates=intermediates)


def gc_run(session: Session, settings: Settings, intermediates: bool) -> tuple[int, list[disk.GcItem]]:
    return disk.collect(session, settings.artefact_dir, gc_plan(session, settings, intermediates))
