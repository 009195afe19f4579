"""One SQLAlchemy session per request, closed at teardown."""

from __future__ import annotations

from flask import Flask, current_app, g
from sqlalchemy.orm import Session

from db.session import session_factory


def init_app(app: Flask, url: str) -> None:
    app.extensions["stapipe_db"] = session_factory(url)

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
