"""Fast, safe stop: SIGTERM to a worker hands its running stage back to the queue within seconds.

Why: Celery's warm shutdown waits for the running task, and a paper-preset training epoch takes
far longer than any stop grace period; Docker then SIGKILLs the worker and the stage waits minutes
for its heartbeat to go stale. Instead, when the worker's main process starts its warm shutdown
it sends ``HANDBACK_SIGNAL`` to its pool children. In a child that only sets a flag; the stage's
cancellation callback (worker.stage_runner.DbCallbacks) reads it at the next batch boundary, the
trainer raises ``Cancelled`` (``last.pt`` already holds the last complete epoch) and the stage
runner puts the stage back to ``queued`` under a new token without counting the attempt
(:func:`worker.stage_runner._hand_back`). Another worker, or this one restarted, resumes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from celery import signals

log = logging.getLogger(__name__)

# SIGUSR1 is billiard's soft time limit in pool children and SIGTERM/SIGINT belong to Celery.
HANDBACK_SIGNAL = signal.SIGUSR2
_requested = threading.Event()


def requested() -> bool:
    """True in a pool child once its worker began a warm shutdown."""
    return _requested.is_set()


def _on_signal(_signum: int, _frame: FrameType | None) -> None:
    _requested.set()


def pool_children(parent: int) -> list[int]:
    """PIDs of the direct children of ``parent`` (Linux /proc; the pool processes of a Celery worker)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may contain spaces, so split after the last ')'
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                pids.append(int(stat.parent.name))
    return pids


@signals.worker_init.connect
def _ignore_in_parent(**_: Any) -> None:
    """The main process ignores the signal, so a child forked during shutdown inherits "ignore"
    (instead of the default action, death) until it installs its own handler."""
    signal.signal(HANDBACK_SIGNAL, signal.SIG_IGN)


@signals.worker_process_init.connect
def _install_in_child(**_: Any) -> None:
    _requested.clear()
    signal.signal(HANDBACK_SIGNAL, _on_signal)


@signals.worker_shutting_down.connect
def _tell_children(how: str | None = None, **_: Any) -> None:
    """Warm shutdown (SIGTERM, SIGINT): ask every pool child to hand its stage back."""
    if how != "Warm":
        return
    for pid in pool_children(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, HANDBACK_SIGNAL)
    log.warning("warm shutdown: running stages are handed back to the queue at their next batch boundary")
