"""Query-string and JSON-body parsing that answers bad input with 400/422 and a clear message."""

from __future__ import annotations

import json
from typing import Any

from flask import request
from werkzeug.exceptions import BadRequest

from .errors import FieldErrors


def int_arg(name: str, default: int, *, lo: int, hi: int | None = None) -> int:
    """An integer query parameter within [lo, hi]; otherwise 422 naming the parameter."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FieldErrors({name: "must be a whole number"}) from None
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise FieldErrors({name: f"must be {bound}"})
    return value


def json_object() -> dict[str, Any]:
    """The request body as a JSON object, or 400 saying why it is not one."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise BadRequest("the request body must be a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        msg = f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}" if isinstance(
            exc, json.JSONDecodeError) else "malformed JSON"
        raise BadRequest(msg) from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data
