"""Transient database errors, and retrying a unit of work across them.

Why: a connection reset, a PostgreSQL admin shutdown (failover, ``pg_terminate_backend``), a
serialization failure or a locked SQLite file is over in a moment; a stage that fails on one loses
hours of training. Everything a stage writes goes through :func:`retry` with backoff; after
``budget_s`` of consecutive failure the caller gets :class:`DatabaseUnavailable` and decides what an
outage means for it (a worker hands the stage back, the dashboard answers 503).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATE classes/codes that a retry can cure: connection exceptions (08), serialization failure
# and deadlock (40001, 40P01), operator intervention (57P01 admin shutdown, 57P02 crash shutdown,
# 57P03 cannot connect now), insufficient resources (53: too many connections).
TRANSIENT_SQLSTATES = ("08", "40001", "40P01", "57P", "53")


def _sqlstate(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a database error that the same statements may not hit a moment later."""
    if isinstance(exc, PoolTimeout | InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    state = _sqlstate(exc)
    if state == "55000" and "accepting connections" in str(exc):  # ALTER DATABASE … ALLOW_CONNECTIONS false
        return True
    if state:
        return state.startswith(TRANSIENT_SQLSTATES)
    return isinstance(exc, OperationalError)  # no SQLSTATE: SQLite "database is locked", socket errors


class DatabaseUnavailable(RuntimeError):
    """The database kept failing with transient errors for longer than the retry budget."""


def backoff(attempt: int, first: float = 0.1, cap: float = 5.0) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): doubling from ``first`` to ``cap``."""
    return min(cap, first * (2 ** min(attempt, 16)))


def retry(work: Callable[[], T], what: str, budget_s: float, *,
          sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``work`` (one whole transaction: it opens and commits its own session) until it succeeds.

    Transient errors are retried with :func:`backoff` for up to ``budget_s`` seconds, then raised as
    :class:`DatabaseUnavailable` (one line: what was being done, for how long, the last error);
    any other error propagates at once. ``work`` must be safe to run again after a failure that
    may or may not have committed (conditional UPDATEs, upserts).
    """
    deadline = time.monotonic() + budget_s
    attempt = 0
    while True:
        try:
            return work()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if time.monotonic() >= deadline:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise DatabaseUnavailable(
                    f"database unavailable for {budget_s:.0f} s while {what}: {type(exc).__name__}: {first}"
                ) from exc
            delay = backoff(attempt)
            log.warning("transient database error while %s (retry %d in %.1f s): %s",
                        what, attempt + 1, delay, type(exc).__name__)
            attempt += 1
            sleep(min(delay, max(0.0, deadline - time.monotonic())))


__all__ = ["DatabaseUnavailable", "backoff", "is_transient", "retry"]
