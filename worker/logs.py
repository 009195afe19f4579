"""Per-stage log files (``log_dir/<pipeline>/<stage>.log``), readable while the stage runs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StageLog:
    """Appends lines to the stage's log file, flushed per line so the dashboard can tail it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8", buffering=1)

    def write(self, msg: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        for line in str(msg).splitlines() or [""]:
            self._fh.write(f"{stamp} {line}\n")

    def close(self) -> None:
        self._fh.close()


def append_line(path: str | Path, msg: str) -> None:
    """One line to a stage log from a short task (an extraction item)."""
    sl = StageLog(path)
    try:
        sl.write(msg)
    finally:
        sl.close()


@contextmanager
def stage_logging(path: str | Path, loggers: tuple[str, ...] = ("sta_models", "worker")) -> Iterator[StageLog]:
    """A :class:`StageLog` plus a logging handler on ``loggers`` for the task's duration, so
    library warnings and worker messages land in the same file as the callbacks' lines."""
    stage_log = StageLog(path)
    handler = logging.FileHandler(stage_log.path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.INFO)
    # Callbacks.log() both logs to "sta_models" and calls message(); keep one copy in the file
    handler.addFilter(lambda record: record.name != "sta_models")
    targets = [logging.getLogger(name) for name in loggers]
    old_levels = [lg.level for lg in targets]
    for lg in targets:
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield stage_log
    finally:
        for lg, level in zip(targets, old_levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()
        stage_log.close()


def tail(path: str | Path, max_bytes: int = 64_000) -> str:
    """The last ``max_bytes`` of a log file ('' if it does not exist yet)."""
    p = Path(path)
    if not p.is_file():
        return ""
    with p.open("rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(max(0, size - max_bytes))
        return fh.read().decode("utf-8", errors="replace")
