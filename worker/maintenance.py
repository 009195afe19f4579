"""Crash recovery inside every worker: once at start, then periodically (a thread in the parent).

Why in the worker: it is the one process that is always there when work can be done, and the
conditional UPDATEs in :func:`worker.orchestration.recover_stale` make it safe for several workers
to run it at once. The filesystem broker has no acknowledgements at all, and Redis redelivers an
unacked message only after the (deliberately long) visibility timeout, so the DB heartbeat is what
brings a stage back after a SIGKILL or a lost Redis.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals

log = logging.getLogger(__name__)

# Timings derive from settings.recovery_interval_s (default 30 s; tests use ~2 s):
# - a running stage is re-queued after max(4 intervals, 3 heartbeats) of heartbeat silence
#   (the heartbeat beats every 10 s, so a live stage is never taken over);
# - a queued stage whose message is missing from the broker is sent again after 2 intervals (the
#   broker is checked, so a message merely waiting behind a long training is not duplicated).


def timings(interval: float) -> tuple[float, float]:
    from worker.stage_context import HEARTBEAT_S

    return max(4 * interval, 3 * HEARTBEAT_S), max(2 * interval, 2.0)

_stop = threading.Event()


def run_once(own_host: str | None = None) -> int:
    from db.session import session_scope
    from stapipe_settings import get_settings
    from worker.celery_app import message_exists, purge_processed
    from worker.orchestration import recover_stale

    settings = get_settings()
    stale, lost = timings(settings.recovery_interval_s)
    with session_scope(settings.db_url) as session:
        recovered = recover_stale(session, own_host=own_host, stale_after_s=stale, lost_after_s=lost,
                                  message_exists=message_exists(settings))
    purge_processed(settings)
    if recovered:
        log.warning("recovered %d stage(s): %s", len(recovered), ", ".join(f"{s.id}:{s.kind}" for s in recovered))
    return len(recovered)


def _loop() -> None:
    from stapipe_settings import get_settings

    while not _stop.wait(get_settings().recovery_interval_s):
        try:
            run_once()
        except Exception:  # DB or broker briefly away: try again next round
            log.warning("maintenance round failed", exc_info=True)


@signals.worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    host = getattr(sender, "hostname", None)
    try:
        run_once(own_host=host)  # our previous life (same --hostname) is dead: take its stages back
    except Exception:
        log.warning("startup recovery failed", exc_info=True)
    threading.Thread(target=_loop, name="stapipe-maintenance", daemon=True).start()


@signals.worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    _stop.set()
