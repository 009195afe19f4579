"""A preset plus overrides into a validated :class:`PipelineConfig`: the one way, for every entry point.

``stapipe run/demo --set``, ``stapipe submit --set`` (through the API), the dashboard's form and the
JSON API all apply overrides here, so a key means the same thing everywhere:

- keys are dotted paths into the config (``sta.lr``, ``coarse.s.epochs``); nested dicts
  (``{"coarse": {"s": {"epochs": 3}}}``) are flattened to the same paths;
- ``*`` stands for every branch (:data:`BRANCHES`), and only there: ``coarse.*.epochs`` and
  ``fine.*.lr`` expand to the three branches; a ``*`` anywhere else is an unknown setting;
- a key must name an existing leaf (not a section); ``--set`` values are read as JSON when they
  parse (numbers, lists, ``null``), else as text.

Errors come back keyed by the key as written, then by pydantic's dotted location, so the form can
put each message next to its field and the CLI can print them on one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from .config import BRANCHES, PRESETS, PipelineConfig, preset

WILDCARD = "*"
BRANCH_SECTIONS = ("coarse", "fine")  # the sections keyed by branch, where WILDCARD may stand
WEIGHT_FIELDS = ("backbone_weights", "audio_weights")


class ConfigErrors(ValueError):
    """Field-keyed messages (key ``""`` for errors about the whole config)."""

    def __init__(self, fields: dict[str, str]):
        super().__init__("; ".join(f"{k or 'config'}: {v}" for k, v in fields.items()))
        self.fields = fields


def parse_set_option(item: str) -> tuple[str, Any]:
    """``k=v`` from the command line; v is read as JSON when it parses (numbers, lists), else text."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set expects key=value, got {item!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def parse_set_options(items: Iterable[str]) -> dict[str, Any]:
    """Every ``--set`` of a command line, in order (a later one for the same key wins)."""
    return dict(parse_set_option(item) for item in items)


def flatten_overrides(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Accept nested dicts ({"coarse": {"s": {"epochs": 3}}}) as well as dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_overrides(value, f"{full}."))
        else:
            flat[full] = value
    return flat


def expand_key(key: str) -> list[list[str]]:
    """The concrete paths a key stands for (the wildcard rule); ``[]`` when the key is malformed."""
    parts = key.split(".")
    if not all(parts):
        return []
    if len(parts) > 1 and parts[0] in BRANCH_SECTIONS and parts[1] == WILDCARD:
        return [[parts[0], branch, *parts[2:]] for branch in BRANCHES]
    return [parts]


def _coerce_leaf(field: str, value: Any) -> Any:
    """Form strings to the types pydantic expects where its lax mode does not do it for us."""
    if field == "decay_epochs" and isinstance(value, str):
        parts = [p for p in value.replace(";", ",").replace(" ", ",").split(",") if p]
        try:
            return [int(p) for p in parts]
        except ValueError:
            raise ValueError("write whole epoch numbers separated by commas, e.g. 5, 10") from None
    if field in WEIGHT_FIELDS and isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, str):
        return value.strip()
    return value


def _set_path(data: dict[str, Any], parts: list[str], value: Any) -> str | None:
    """Set one leaf; the error message when the path names no leaf or the value cannot be coerced."""
    node: Any = data
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            return "unknown setting"
        node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node or isinstance(node[parts[-1]], dict):
        return "unknown setting"
    try:
        node[parts[-1]] = _coerce_leaf(parts[-1], value)
    except ValueError as exc:
        return str(exc)
    return None


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, str]:
    """Apply overrides to a config dict in place; the errors keyed by the key as written."""
    errors: dict[str, str] = {}
    for key, value in flatten_overrides(overrides).items():
        if key == "preset":
            continue
        paths = expand_key(key)
        if not paths:
            errors[key] = "unknown setting"
        for parts in paths:
            message = _set_path(data, parts, value)
            if message is not None:
                errors.setdefault(key, message)
    return errors


_PHRASES = (
    ("Input should be greater than or equal to ", "must be at least "),
    ("Input should be less than or equal to ", "must be at most "),
    ("Input should be greater than ", "must be more than "),
    ("Input should be less than ", "must be less than "),
    ("Input should be a valid integer, unable to parse string as an integer", "must be a whole number"),
    ("Input should be a valid integer, got a number with a fractional part", "must be a whole number"),
    ("Input should be a valid integer", "must be a whole number"),
    ("Input should be a valid number, unable to parse string as a number", "must be a number"),
    ("Input should be a valid number", "must be a number"),
    ("Input should be ", "must be "),
    ("Extra inputs are not permitted", "unknown setting"),
)


def error_message(err: Mapping[str, Any]) -> str:
    """Pydantic's message, phrased for a person ("must be at least 1")."""
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    for old, new in _PHRASES:
        if msg.startswith(old):
            return new + msg[len(old):]
    return msg


def config_from_overrides(preset_name: str, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """The validated config of a preset plus overrides, or :class:`ConfigErrors` naming each bad key."""
    if preset_name not in PRESETS:
        raise ConfigErrors({"preset": f"choose one of {', '.join(PRESETS)}"})
    data = json.loads(preset(preset_name).model_dump_json())
    errors = apply_overrides(data, overrides or {})
    if errors:
        raise ConfigErrors(errors)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            errors.setdefault(loc, error_message(err))
        raise ConfigErrors(errors) from None


__all__ = [
    "BRANCH_SECTIONS",
    "ConfigErrors",
    "WEIGHT_FIELDS",
    "WILDCARD",
    "apply_overrides",
    "config_from_overrides",
    "error_message",
    "expand_key",
    "flatten_overrides",
    "parse_set_option",
    "parse_set_options",
]
