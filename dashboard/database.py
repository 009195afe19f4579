"""One SQLAlchemy session per request, closed at teardown.

The dashboard has its own engine because of SQLite: ``db.session`` starts every SQLite
transaction with ``BEGIN IMMEDIATE`` (right for workers that read-then-write), but a page view
holding the write lock would stall every worker for the length of the request. Here GET/HEAD
requests use a plain deferred ``BEGIN`` (in WAL mode readers never block writers) and only
state-changing requests take the write lock up front. PostgreSQL is unaffected.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, g, has_request_context, request
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from db import session as db_session_module
from db.session import make_engine

READ_METHODS = ("GET", "HEAD")


def _sqlite_begin(conn: Any) -> None:  # a DBAPI connection (sqlite3.Connection)
    reading = has_request_context() and request.method in READ_METHODS
    conn.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")


def make_dashboard_engine(url: str) -> Engine:
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        worker_begin = getattr(db_session_module, "_sqlite_begin", None)
        if worker_begin is not None and event.contains(engine, "begin", worker_begin):
            event.remove(engine, "begin", worker_begin)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def init_app(app: Flask, url: str) -> None:
    engine = make_dashboard_engine(url)
    app.extensions["stapipe_engine"] = engine
    app.extensions["stapipe_db"] = sessionmaker(bind=engine, expire_on_commit=False)

    @app.teardown_appcontext
    def _close(exc: BaseException | None) -> None:
        session: Session | None = g.pop("db_session", None)
        if session is not None:
            if exc is not None:
                session.rollback()
            session.close()


def db_session() -> Session:
    """The request's session (created on first use)."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["stapipe_db"]()
    return g.db_session
