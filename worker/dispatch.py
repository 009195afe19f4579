"""Sending "run stage N" / "run item N" messages, after the commit that queued them.

Celery by default; tests swap in a recorder (:func:`set_dispatcher`). A failed send is logged and
left to recovery: the row stays queued and ``recover_stale`` sends it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

#: (what, id, queue, token) — ``what`` is "stage" or "item"
Dispatcher = Callable[[str, int, str, str], None]
Message = tuple[str, int, str, str]


def _celery_dispatch(what: str, obj_id: int, queue: str, token: str) -> None:
    from worker.celery_app import send

    send(what, obj_id, queue, token)


_dispatcher: Dispatcher = _celery_dispatch


def set_dispatcher(dispatcher: Dispatcher | None) -> Dispatcher:
    """Replace how messages are sent (tests record them); ``None`` restores Celery. Returns the old one."""
    global _dispatcher
    old = _dispatcher
    _dispatcher = dispatcher or _celery_dispatch
    return old


def send_all(messages: Iterable[Message]) -> None:
    for msg in messages:
        try:
            _dispatcher(*msg)
        except Exception:  # broker down: the row stays queued and requeue_lost() sends it again
            log.exception("could not send %s %s to queue %s", msg[0], msg[1], msg[2])


__all__ = ["Dispatcher", "Message", "set_dispatcher", "send_all"]
