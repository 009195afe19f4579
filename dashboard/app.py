"""The Flask application factory: settings in, a configured app with every blueprint out."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import Flask
from werkzeug.routing import IntegerConverter, Map

from stapipe_settings import Settings, get_settings

from . import (
    api,
    apidocs,
    auth,
    benchmark,
    compare,
    database,
    errors,
    files,
    formatting,
    health,
    pages,
    workers,
)
from .secrets import dashboard_token, secret_key, token_path

log = logging.getLogger(__name__)


class DatabaseId(IntegerConverter):
    """``<int:…>`` limited to the database's INTEGER ids (1 … 2³¹−1): a larger id is a 404, not an
    overflow in the query."""

    def __init__(self, map: Map, *args: Any, **kwargs: Any) -> None:  # noqa: A002
        kwargs.setdefault("min", 1)
        kwargs.setdefault("max", 2**31 - 1)
        super().__init__(map, *args, **kwargs)


def create_app(settings: Settings | None = None, *, testing: bool = False) -> Flask:
    """Build the dashboard. ``settings`` defaults to the process-wide :func:`get_settings`."""
    settings = settings or get_settings()
    app = Flask(__name__)
    token, generated = dashboard_token(settings)
    app.config.update(
        TESTING=testing,
        # Errors go through our handlers (no tracebacks to clients), in tests too.
        PROPAGATE_EXCEPTIONS=False,
        SECRET_KEY=secret_key(settings),
        SESSION_COOKIE_NAME="stapipe_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        MAX_CONTENT_LENGTH=1024 * 1024,  # forms and JSON bodies are small; refuse big uploads early
    )
    app.url_map.converters["int"] = DatabaseId  # every <int:…> id: 404 beyond the database's range
    app.json.sort_keys = False  # type: ignore[attr-defined]  # typed as JSONProvider; the default one has it. Keeps fields in a readable order
    app.extensions["stapipe"] = {"settings": settings, "token": token}
    if not testing:
        _announce_token(settings, generated)
        _upgrade_schema(settings.db_url)

    database.init_app(app, settings.db_url)
    errors.init_app(app)
    auth.init_app(app)
    formatting.init_app(app)
    for blueprint in (health.bp, auth.bp, pages.bp, benchmark.bp, files.bp, api.bp, workers.bp, compare.bp, apidocs.bp):
        app.register_blueprint(blueprint)
    return app


def _announce_token(settings: Settings, generated: bool) -> None:
    """Print the login token of the embedded default, so whoever started the server can log in."""
    if settings.dashboard_password:
        return
    token, _ = dashboard_token(settings, create=False)
    where = token_path(settings)
    state = "generated" if generated else "stored"
    print(f"stapipe dashboard: login token ({state} in {where}): {token}", flush=True)


def _upgrade_schema(url: str) -> None:
    """Bring the database to the current migration (safe from several gunicorn workers at once)."""
    from db.migrate import upgrade

    upgrade(url)
