"""Each Celery worker keeps its own row in ``workers``: written when it is ready, refreshed by a
thread in the parent process every ``HEARTBEAT_S``, deleted on a clean shutdown. Imported by
worker.tasks, so every worker process (``stapipe worker`` or plain ``celery worker``) does it."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import signals

log = logging.getLogger(__name__)
_stop = threading.Event()
_name: list[str] = []


def _queues(consumer: Any) -> list[str]:
    try:
        return sorted(consumer.app.amqp.queues.consume_from.keys())
    except AttributeError:
        return []


def _concurrency(consumer: Any) -> int | None:
    value = getattr(getattr(consumer, "controller", None), "concurrency", None)
    return int(value) if isinstance(value, int) else None


def _register(name: str, queues: list[str], concurrency: int | None) -> None:
    from db.session import session_scope
    from stapipe_settings import get_settings
    from worker.registry import detect_device, register

    with session_scope(get_settings().db_url) as session:
        register(session, name=name, host=socket.gethostname(), queues=queues, device=detect_device(queues),
                 pid=os.getpid(), concurrency=concurrency)


def _loop(name: str, queues: list[str], concurrency: int | None) -> None:
    from db.session import session_scope
    from stapipe_settings import get_settings
    from worker.registry import HEARTBEAT_S, beat

    while not _stop.wait(HEARTBEAT_S):
        try:
            with session_scope(get_settings().db_url) as session:
                present = beat(session, name)
            if not present:
                _register(name, queues, concurrency)
        except Exception:  # DB briefly away: the row goes stale and comes back next round
            log.warning("worker heartbeat failed", exc_info=True)


@signals.worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    name = str(getattr(sender, "hostname", None) or socket.gethostname())
    queues, concurrency = _queues(sender), _concurrency(sender)
    _name[:] = [name]
    try:
        _register(name, queues, concurrency)
    except Exception:
        log.warning("could not register worker %s", name, exc_info=True)
    threading.Thread(target=_loop, args=(name, queues, concurrency), name="stapipe-presence", daemon=True).start()


@signals.worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    _stop.set()
    if not _name:
        return
    try:
        from db.session import session_scope
        from stapipe_settings import get_settings
        from worker.registry import unregister

        with session_scope(get_settings().db_url) as session:
            unregister(session, _name[0])
    except Exception:
        log.warning("could not remove worker %s", _name[0], exc_info=True)
