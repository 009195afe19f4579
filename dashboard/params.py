"""Query-string and JSON-body parsing that answers bad input with 400/422 and a clear message."""

from __future__ import annotations

import json
from typing import Any

from flask import request
from werkzeug.exceptions import BadRequest

from .errors import FieldErrors

INT_MAX = 2**31 - 1  # the database's INTEGER: larger values would fail in the query, not here
JSON_DEPTH_MAX = 32  # pipeline submissions nest 3 levels; 50,000 would exhaust the stack



def int_arg(name: str, default: int, *, lo: int, hi: int | None = None) -> int:
    """An integer query parameter within [lo, hi]; otherwise 422 naming the parameter."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FieldErrors({name: "must be a whole number"}) from None
    hi = INT_MAX if hi is None else hi
    if value < lo or value > hi:
        raise FieldErrors({name: f"must be between {lo} and {hi}"})
    return value


def json_object() -> dict[str, Any]:
    """The request body as a JSON object, or 400 saying why it is not one."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise BadRequest("the request body must be a JSON object")
    if _depth(raw) > JSON_DEPTH_MAX:
        raise BadRequest(f"JSON nested deeper than {JSON_DEPTH_MAX} levels")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise BadRequest(f"JSON nested deeper than {JSON_DEPTH_MAX} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        msg = f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}" if isinstance(
            exc, json.JSONDecodeError) else "malformed JSON"
        raise BadRequest(msg) from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def _depth(raw: bytes) -> int:
    """Deepest ``[``/``{`` nesting in a JSON text (strings skipped), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest
