"""Engines and sessions from a URL: SQLite for the embedded default, PostgreSQL (psycopg 3) in compose."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, CursorResult, Result, make_url
from sqlalchemy.orm import Session, sessionmaker


def normalise_url(url: str) -> str:
    """``postgresql://`` → ``postgresql+psycopg://`` (psycopg 3 is the only driver installed)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    # WAL: the dashboard reads while workers write; busy_timeout: writers wait instead of failing
    # with "database is locked"; foreign_keys: SQLite ignores ON DELETE CASCADE without it.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
    # let SQLAlchemy emit BEGIN itself (pysqlite's implicit BEGIN is DEFERRED, see below)
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn: Connection) -> None:
    # BEGIN IMMEDIATE takes the write lock up front: a DEFERRED transaction that reads and then
    # writes fails at once with SQLITE_BUSY (busy_timeout does not apply) when another process
    # committed in between — exactly what concurrent advance() calls from several workers do.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A new engine; SQLite gets the pragmas above and its folder created."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": 30})
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)  # survive a PostgreSQL restart
    # A lost network link must fail a statement within seconds, not after TCP's ~15 min of
    # retransmissions: stage-side writes then retry, and a cut-off worker stops (docs/deployment.md).
    kwargs.setdefault("connect_args", dict(PG_NETWORK_TIMEOUTS))
    return create_engine(url, **kwargs)


PG_NETWORK_TIMEOUTS = {
    "connect_timeout": 5,  # s
    "tcp_user_timeout": 10_000,  # ms until unacknowledged data fails the connection
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3, "keepalives_count": 3,
}


_ENGINES: dict[str, Engine] = {}


def get_engine(url: str) -> Engine:
    """One engine per URL per process (``dispose_engines()`` after a fork)."""
    url = normalise_url(url)
    if url not in _ENGINES:
        _ENGINES[url] = make_engine(url)
    return _ENGINES[url]


def dispose_engines() -> None:
    """Forget pooled connections inherited from a parent process (Celery prefork children)."""
    for engine in _ENGINES.values():
        engine.dispose(close=False)
    _ENGINES.clear()


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session committed on success and rolled back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE/DELETE matched: ``Session.execute`` is typed as returning a plain ``Result``,
    but for DML it is a ``CursorResult``, which carries the count."""
    return cast(CursorResult[Any], result).rowcount


__all__ = ["rowcount", "make_engine", "get_engine", "dispose_engines", "session_factory", "session_scope", "normalise_url"]
