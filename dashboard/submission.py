"""Validating a pipeline submission (form or JSON) into what the job system needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sta_models.config import PRESETS, PipelineConfig
from sta_models.config_overrides import ConfigErrors
from stapipe_settings import Settings

from .config_form import PathRoots, build_config
from .paths import PathRejected, resolve_dataset_root

NAME_MAX = 200
PATH_MAX = 1000  # pipelines.dataset_root


@dataclass
class Submission:
    name: str
    dataset_root: str  # resolved, inside settings.data_dir
    config: PipelineConfig


def weight_roots(settings: Settings) -> PathRoots:
    roots = [settings.weights_dir.expanduser().resolve()] if settings.weights_dir else []
    roots.append(settings.data_dir)
    return PathRoots(tuple(roots))


def validate(
    settings: Settings, *, name: Any, dataset_root: Any, preset: Any, overrides: Any
) -> Submission:
    """A :class:`Submission` or :class:`ConfigErrors` with every problem found (not just the first)."""
    errors: dict[str, str] = {}
    clean_name = name.strip() if isinstance(name, str) else ""
    if not isinstance(name, str) or not clean_name:
        errors["name"] = "enter a name"
    elif len(clean_name) > NAME_MAX:
        errors["name"] = f"at most {NAME_MAX} characters"
    elif any(ord(c) < 32 or ord(c) == 127 for c in clean_name):
        errors["name"] = "must not contain control characters (NUL, line breaks, …)"
    root = None
    if not isinstance(dataset_root, str):
        errors["dataset_root"] = "enter a dataset folder"
    else:
        try:
            root = resolve_dataset_root(dataset_root, settings.data_dir)
        except PathRejected as exc:
            errors["dataset_root"] = str(exc)
        if root is not None and len(str(root)) > PATH_MAX:
            errors["dataset_root"] = f"the folder's full path is longer than {PATH_MAX} characters"
            root = None
    if not isinstance(preset, str) or preset not in PRESETS:
        errors["preset"] = f"choose one of {', '.join(PRESETS)}"
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        errors["overrides"] = "must be an object of setting names to values"
        overrides = {}
    config = None
    if "preset" not in errors:
        try:
            config = build_config(preset, overrides, weight_roots=weight_roots(settings))
        except ConfigErrors as exc:
            errors.update(exc.fields)
    if errors or config is None or root is None:
        raise ConfigErrors(errors)
    return Submission(clean_name, str(root), config)
