"""Error responses that say what was wrong and nothing about the server.

``/api/…`` gets JSON (``{"error", "message"[, "fields"]}``), pages get a small HTML page. Unexpected
exceptions are logged server-side and answered with a generic 500: no traceback, no path; transient
database errors (connection lost, database down) with a 503 and ``Retry-After``.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed

from db.transient import is_transient

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5


class FieldErrors(HTTPException):
    """422 with a message per field (form fields, query parameters, JSON keys)."""

    code = 422
    description = "Some values are invalid."

    def __init__(self, fields: dict[str, str], description: str | None = None):
        super().__init__(description or self.description)
        self.fields = fields


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"


def _respond(code: int, name: str, message: str, fields: dict[str, str] | None = None, headers: Any = None) -> ResponseReturnValue:
    if _wants_json():
        body: dict[str, Any] = {"error": name, "message": message}
        if fields:
            body["fields"] = fields
        response: Response | str = jsonify(body)
    else:
        response = render_template("error.html", code=code, name=name, message=message, fields=fields or {})
    return response, code, headers or {}


def _http_error(exc: HTTPException) -> ResponseReturnValue:
    headers = {}
    if exc.code == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="stapipe"'
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        headers["Retry-After"] = str(retry_after)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        headers["Allow"] = ", ".join(exc.valid_methods)
    return _respond(
        exc.code or 500, exc.name, exc.description or exc.name, getattr(exc, "fields", None), headers
    )


def _unexpected(exc: Exception) -> ResponseReturnValue:
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    if is_transient(exc):  # a database blip or outage is the server's state, not a bug: 503, retry
        log.warning("database unavailable on %s %s: %s", request.method, request.path, type(exc).__name__)
        return _respond(503, "Service Unavailable",
                        "The database is not reachable right now; nothing was changed. Try again in a moment.",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    log.exception("unhandled error on %s %s", request.method, request.path)
    err = InternalServerError()
    return _respond(500, err.name, "Something went wrong on the server. The error was logged.")


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
