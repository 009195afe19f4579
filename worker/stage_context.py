"""What a stage body and a fan-out item get: typed config, folders, callbacks (no DB access needed)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sta_models.config import PipelineConfig
    from worker.logs import StageLog

DEFAULT_OUTAGE_S = 90.0  # settings.db_outage_s: an outage longer than this hands the stage back
HEARTBEAT_S = 10.0  # a running stage bumps updated_at this often
REDELIVERY_STALE_S = 3 * HEARTBEAT_S  # a redelivered message may take over a stage or item after this much silence


class UndeclaredInput(KeyError):
    """A body asked for an output it did not declare in its stage's ``inputs``."""

    def __str__(self) -> str:  # KeyError quotes its argument; this is a sentence
        return str(self.args[0])


class Inputs(Mapping[str, Path]):
    """The output folders a body may read, by stage kind: only the ones its stage declared."""

    def __init__(self, kind: str, declared: tuple[str, ...], dirs: Mapping[str, Path]) -> None:
        self._kind = kind
        self._dirs = {k: dirs[k] for k in declared if k in dirs}
        self._declared = declared

    def __getitem__(self, name: str) -> Path:
        if name not in self._declared:
            raise UndeclaredInput(f"stage {self._kind} reads {name!r}, which is not among its declared inputs "
                                  f"{list(self._declared)}")
        if name not in self._dirs:
            raise UndeclaredInput(f"stage {self._kind}: input {name!r} has no stage in this pipeline")
        return self._dirs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dirs)

    def __len__(self) -> int:
        return len(self._dirs)


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


__all__ = ["StageContext", "ItemJob", "Inputs", "UndeclaredInput", "DEFAULT_OUTAGE_S", "HEARTBEAT_S", "REDELIVERY_STALE_S"]
