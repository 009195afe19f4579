"""Keep a Celery worker process alive: restart it when it dies on its own.

Why: Celery's consumer can die with an "Unrecoverable error" when the Redis connection drops while
an acks_late task is in flight (kombu restores unacked messages over a connection that is gone;
celery/celery#4652, kombu#582 report the same family of crashes). A compose restart policy would
bring it back, but the embedded stack and bare hosts have none, so ``stapipe worker`` does it: the
restarted worker runs the startup recovery and the DB state carries on. SIGTERM/SIGINT are passed
to the worker (warm shutdown) and end the loop.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from types import FrameType

log = logging.getLogger(__name__)

MIN_UPTIME_S = 60.0  # a worker that ran this long resets the back-off
MAX_BACKOFF_S = 30.0


def supervise(argv: list[str]) -> int:
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    backoff = 1.0
    try:
        while True:
            started = time.monotonic()
            child = subprocess.Popen(argv)
            rc = child.wait()
            if stopping:
                return 0 if rc in (0, -signal.SIGTERM, -signal.SIGINT) else rc
            if time.monotonic() - started > MIN_UPTIME_S:
                backoff = 1.0
            log.warning("celery worker exited with %s; restarting in %.0f s", rc, backoff)
            time.sleep(backoff)
            if stopping:
                return 0
            backoff = min(backoff * 2, MAX_BACKOFF_S)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
