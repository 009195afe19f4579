"""Building a :class:`PipelineConfig` from a preset plus user overrides, with per-field errors.

The form, the JSON API and ``stapipe submit --set`` all go through :func:`build_config`, so the
server validates one way: a preset dumped to a dict, overrides applied by dotted key
(``coarse.s.epochs``; ``*`` stands for every branch), then pydantic. Pydantic's error locations
are dotted the same way, which maps each message back to the form field it belongs to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sta_models.branches import get_branch
from sta_models.config import BRANCHES, PRESETS, PipelineConfig, preset

from .paths import inside

# Rows of the form's settings grid: (dotted prefix, label).
TRAIN_GROUPS: tuple[tuple[str, str], ...] = (
    *((f"coarse.{b}", f"Coarse {get_branch(b).label}") for b in BRANCHES),
    *((f"fine.{b}", f"Fine {get_branch(b).label}") for b in BRANCHES),
    ("sta", "STA"),
)
# Columns of the grid: (field, label, input type).
TRAIN_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("backbone", "Backbone", "select"),
    ("input_size", "Input size", "number"),
    ("epochs", "Epochs", "number"),
    ("batch_size", "Batch size", "number"),
    ("lr", "Learning rate", "text"),
    ("decay_epochs", "Decay epochs", "text"),
    ("backbone_weights", "Backbone weights file", "text"),
    ("audio_weights", "Audio weights file", "text"),
)
OTHER_FIELDS: tuple[tuple[str, str], ...] = (("extract.size", "Stored frame size"),)
WEIGHT_FIELDS = ("backbone_weights", "audio_weights")
BACKBONES = ("resnet18", "resnet50", "resnext101_32x8d")


class ConfigErrors(ValueError):
    """Field-keyed messages (key ``""`` for errors about the whole config)."""

    def __init__(self, fields: dict[str, str]):
        super().__init__("; ".join(f"{k or 'config'}: {v}" for k, v in fields.items()))
        self.fields = fields


@dataclass(frozen=True)
class PathRoots:
    """Where weight files may live (resolved; symlinks followed before the check)."""

    roots: tuple[Path, ...]


def form_field_names() -> list[str]:
    """Every editable dotted key shown by the HTML form."""
    names = [key for key, _ in OTHER_FIELDS]
    names += [f"{group}.{field}" for group, _ in TRAIN_GROUPS for field, _, _ in TRAIN_FIELDS]
    return names


def flatten(cfg: PipelineConfig) -> dict[str, Any]:
    """The form-visible values of a config, keyed like the form fields (lists as "5, 10")."""
    data = cfg.model_dump()
    out: dict[str, Any] = {}
    for key in form_field_names():
        value: Any = data
        for part in key.split("."):
            value = value[part]
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        out[key] = "" if value is None else value
    return out


def presets_for_form() -> dict[str, dict[str, Any]]:
    return {name: flatten(preset(name)) for name in PRESETS}


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


def _apply(data: dict[str, Any], key: str, value: Any, errors: dict[str, str]) -> None:
    parts = key.split(".")
    if not all(parts):
        errors[key] = "unknown setting"
        return
    if parts[0] in ("coarse", "fine") and len(parts) > 1 and parts[1] == "*":
        for branch in BRANCHES:
            _apply(data, ".".join([parts[0], branch, *parts[2:]]), value, errors)
        return
    node: Any = data
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            errors[key] = "unknown setting"
            return
        node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node or isinstance(node[parts[-1]], dict):
        errors[key] = "unknown setting"
        return
    try:
        node[parts[-1]] = _coerce_leaf(parts[-1], value)
    except ValueError as exc:
        errors[key] = str(exc)


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


def _message(err: Mapping[str, Any]) -> str:
    """Pydantic's message, phrased for a form ("must be at least 1")."""
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    for old, new in _PHRASES:
        if msg.startswith(old):
            return new + msg[len(old):]
    return msg


def _check_weights(cfg: PipelineConfig, roots: PathRoots, errors: dict[str, str]) -> PipelineConfig:
    """Weight files must exist inside an allowed root; they are stored resolved."""
    data = cfg.model_dump()
    for group, _ in TRAIN_GROUPS:
        node = data
        for part in group.split("."):
            node = node[part]
        for field in WEIGHT_FIELDS:
            value = node.get(field)
            if not value:
                continue
            key = f"{group}.{field}"
            if "\x00" in value:
                errors[key] = "the path contains a NUL character"
                continue
            raw = Path(value)
            found = None
            for root in roots.roots:
                candidate = raw if raw.is_absolute() else root / raw
                try:
                    resolved = candidate.resolve(strict=True)
                except (OSError, RuntimeError):
                    continue
                if resolved.is_file() and inside(root, resolved):
                    found = resolved
                    break
            if found is None:
                errors[key] = "no such weights file inside the weights or data folder"
            else:
                node[field] = str(found)
    return PipelineConfig.model_validate(data)


def build_config(
    preset_name: str, overrides: Mapping[str, Any] | None = None, *, weight_roots: PathRoots | None = None
) -> PipelineConfig:
    """The validated config or :class:`ConfigErrors` naming each bad field."""
    if preset_name not in PRESETS:
        raise ConfigErrors({"preset": f"choose one of {', '.join(PRESETS)}"})
    data = json.loads(preset(preset_name).model_dump_json())
    errors: dict[str, str] = {}
    for key, value in flatten_overrides(overrides or {}).items():
        if key == "preset":
            continue
        _apply(data, key, value, errors)
    if errors:
        raise ConfigErrors(errors)
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            errors.setdefault(loc, _message(err))
        raise ConfigErrors(errors) from None
    if weight_roots is not None:
        cfg = _check_weights(cfg, weight_roots, errors)
        if errors:
            raise ConfigErrors(errors)
    return cfg


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


__all__ = [
    "BACKBONES",
    "ConfigErrors",
    "OTHER_FIELDS",
    "PathRoots",
    "TRAIN_FIELDS",
    "TRAIN_GROUPS",
    "build_config",
    "flatten",
    "form_field_names",
    "parse_set_option",
    "presets_for_form",
]
