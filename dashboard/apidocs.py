"""``/api-docs``: a readable page for the JSON API (Swagger UI served from the app's static files,
no CDN) instead of a YAML download. Outside ``/api/`` so a logged-out visitor gets the login page."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask.typing import ResponseReturnValue

bp = Blueprint("apidocs", __name__)


@bp.get("/api-docs")
def api_docs() -> ResponseReturnValue:
    return render_template("api_docs.html")
