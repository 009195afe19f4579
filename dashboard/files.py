"""Serving artefact files (preview PNGs, overlay MP4s, JSON) by artefact id, never by a path.

The id selects a database row; its path must still resolve (symlinks followed) inside
``settings.artefact_dir``, so neither a crafted row nor a symlink in the artefact tree exposes
other files. ``conditional=True`` gives ETags and HTTP range requests, which ``<video>`` seeking
needs.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from flask import Blueprint, current_app, request, send_file
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import NotFound

from db.models import Artefact

from . import queries
from .database import db_session
from .paths import safe_artefact_file

bp = Blueprint("files", __name__)
INLINE_TYPES = ("image/png", "image/jpeg", "video/mp4", "video/webm", "application/json", "text/plain",
                "text/csv")


def artefact_path(a: Artefact) -> Path | None:
    return safe_artefact_file(a.path, current_app.extensions["stapipe"]["settings"].artefact_dir)


@bp.get("/artefacts/<int:artefact_id>/file")
def artefact_file(artefact_id: int) -> ResponseReturnValue:
    artefact = queries.get_artefact(db_session(), artefact_id)
    if artefact is None:
        raise NotFound(f"no artefact {artefact_id}")
    path = artefact_path(artefact)
    if path is None:
        raise NotFound("the artefact's file is not available")
    mimetype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    inline = mimetype in INLINE_TYPES and request.args.get("download") != "1"
    response = send_file(
        path, mimetype=mimetype, conditional=True, as_attachment=not inline, download_name=path.name,
        max_age=0,
    )
    response.headers["Cache-Control"] = "private, max-age=60"
    return response
