"""The pipeline form's fields, and :func:`build_config` for the form and the JSON API.

Overrides are applied by :mod:`sta_models.config_overrides` (the same parser and wildcard rule as
``stapipe run/demo --set``); this module adds what only the server knows: the form's grid of
fields and the check that weight files lie inside an allowed folder. Error keys are dotted like
the form's field names, which maps each message back to the field it belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sta_models.branches import get_branch
from sta_models.config import BACKBONES as _BACKBONES
from sta_models.config import BRANCHES, PRESETS, PipelineConfig, preset
from sta_models.config_overrides import WEIGHT_FIELDS, ConfigErrors, config_from_overrides

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
BACKBONES = tuple(sorted(_BACKBONES))  # the form's select lists the smallest first


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
    """The validated config or :class:`ConfigErrors` naming each bad field; weight files checked too."""
    cfg = config_from_overrides(preset_name, overrides)
    if weight_roots is not None:
        errors: dict[str, str] = {}
        cfg = _check_weights(cfg, weight_roots, errors)
        if errors:
            raise ConfigErrors(errors)
    return cfg


__all__ = [
    "BACKBONES",
    "OTHER_FIELDS",
    "PathRoots",
    "TRAIN_FIELDS",
    "TRAIN_GROUPS",
    "build_config",
    "flatten",
    "form_field_names",
    "presets_for_form",
]
