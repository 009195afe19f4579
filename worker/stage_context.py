"""What a stage body and a fan-out item get: typed config, folders, callbacks (no DB access needed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.stage_graph import Inputs

if TYPE_CHECKING:
    from sta_models.config import PipelineConfig
    from worker.logs import StageLog

DEFAULT_OUTAGE_S = 90.0  # settings.db_outage_s: an outage longer than this hands the stage back
HEARTBEAT_S = 10.0  # a running stage bumps updated_at this often
REDELIVERY_STALE_S = 3 * HEARTBEAT_S  # a redelivered message may take over a stage or item after this much silence


@dataclass
class StageContext:
    """One attempt of one stage, as its body sees it. ``inputs[kind]`` is the output folder of an
    upstream stage the body declared (a reused stage's source folder); any other name raises."""

    url: str
    stage_id: int
    pipeline_id: int
    kind: str
    token: str
    host: str
    config: PipelineConfig
    dataset_root: Path
    output_dir: Path
    inputs: Inputs
    callbacks: Any  # sta_models.callbacks.Callbacks
    stage_log: StageLog
    summary: dict[str, Any] = field(default_factory=dict)  # stored in stages.summary on success
    outage_s: float = DEFAULT_OUTAGE_S  # how long stage-side writes retry a transient DB error


@dataclass(frozen=True)
class ItemJob:
    """What one fan-out item task needs, read in its claim transaction."""

    item_id: int
    token: str
    stage_id: int
    kind: str
    key: str  # the item's name within its stage (a video id for extract)
    dataset_root: Path
    output_dir: Path
    config: PipelineConfig
    log_path: str | None
    skip: bool  # the stage is no longer running or a cancel was requested: record "cancelled"


__all__ = ["StageContext", "ItemJob", "DEFAULT_OUTAGE_S", "HEARTBEAT_S", "REDELIVERY_STALE_S"]
