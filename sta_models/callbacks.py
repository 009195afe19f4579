"""Progress, metrics and cancellation hooks shared by every long-running function.

The library never knows who is listening: the CLI prints a progress bar, the Celery worker writes
rows to the database. Both pass a :class:`Callbacks`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("sta_models")


class Cancelled(Exception):
    """Raised between batches when :meth:`Callbacks.should_cancel` says so; state is saved first."""


@dataclass(frozen=True)
class EpochMetrics:
    """What one finished epoch reports. ``extra`` holds stage-specific values (e.g. val CC/NSS)."""

    epoch: int  # 1-based
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float
    samples_per_s: float
    extra: dict[str, Any] = field(default_factory=dict)  # mostly numbers; stages may add others

    def as_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
            "lr": self.lr,
            "seconds": self.seconds,
            "samples_per_s": self.samples_per_s,
            "extra": dict(self.extra),
        }


@dataclass
class Callbacks:
    """Optional hooks; every field may be left as ``None``."""

    epoch_end: Callable[[EpochMetrics], None] | None = None
    progress: Callable[[int, int, str], None] | None = None  # (done, total, what)
    cancel_requested: Callable[[], bool] | None = None
    message: Callable[[str], None] | None = None
    # what a run trains with, once its networks are built (recipe, random-init sources): the
    # stage's page shows it from the start, not only in the record written at the end
    started: Callable[[dict[str, Any]], None] | None = None

    def on_started(self, info: dict[str, Any]) -> None:
        if self.started is not None:
            self.started(info)

    def on_epoch(self, metrics: EpochMetrics) -> None:
        if self.epoch_end is not None:
            self.epoch_end(metrics)

    def on_progress(self, done: int, total: int, what: str = "") -> None:
        if self.progress is not None:
            self.progress(done, total, what)

    def log(self, msg: str) -> None:
        log.info(msg)
        if self.message is not None:
            self.message(msg)

    def should_cancel(self) -> bool:
        return bool(self.cancel_requested and self.cancel_requested())

    def check_cancel(self) -> None:
        """Raise :class:`Cancelled` if cancellation was requested (call at batch boundaries)."""
        if self.should_cancel():
            raise Cancelled("cancelled on request")


def epoch_line(epoch: int, epochs: int, m: EpochMetrics, seconds: float) -> str:
    """The log line of a finished epoch, rounded for people; values a stage lacks are left out
    (a training without validation prints no "val"/"acc" instead of "None")."""
    parts = [f"epoch {epoch}/{epochs}: train loss {m.train_loss:.4f}"]
    if m.val_loss is not None:
        parts.append(f"val loss {m.val_loss:.4f}")
    if m.val_accuracy is not None:
        parts.append(f"val acc {m.val_accuracy:.3f}")
    for k, v in m.extra.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            parts.append(f"{k} {int(v)}" if k.endswith(("_frames", "_count")) and float(v).is_integer() else f"{k} {v:.3f}")
    return ", ".join(parts) + f" ({seconds:.1f} s)"


NO_CALLBACKS = Callbacks()
