"""Entry point for gunicorn: ``gunicorn dashboard.wsgi:app`` (settings from ``STAPIPE_*``)."""

from __future__ import annotations

from .app import create_app

app = create_app()
