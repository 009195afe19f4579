"""The evaluate stage's result (``metrics.json``): one versioned schema, one writer, one loader.

Written by :mod:`sta_models.evaluation` and read by the dashboard, the API, ``stapipe demo`` and
the benchmarks, so every reader sees the same typed object instead of guessing at the file's
nesting. Torch-free and numpy-free: the dashboard imports it.

Version 1 (all metric values are floats, or null when undefined, e.g. no scorable frame)::

    {"schema_version": 1, "protocol": "stavis", "config": {...}, "metrics": ["cc", ...],
     "dataset": [{"method": "sta", "label": "STA", "values": {...}, "frames_scored": n,
                  "frames_missing": n, "frames_nan": n, "videos_scored": n, "nan_counts": {...},
                  "unpredicted_videos": [...], "unmatched_videos": [...], "extra_frames": n}, ...],
     "videos": [{"video": "<id>", "method": "sta", "values": {...}, "frames_scored": n,
                 "frames_missing": n, "frames_nan": n}, ...],
     "ablation": null | {"metrics": [...], "frames": "...", "rows": [{"method": "cam_s_coarse",
                  "label": "CAM S (coarse)", "group": "CAMs", "values": {...},
                  "frames_scored": n, "frames_missing": n}, ...]},
     "strips": [{"video": "<id>", "file": "strips/<id>.jpg", "seconds": [0, 1, ...],
                 "panels": ["frame", "ground truth", "STA", "centre bias"], "panel_height": h,
                 "panel_width": w}, ...]}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sta_models import metric_table

SCHEMA_VERSION = 1
METRICS = metric_table.NAMES  # the table's names, labels and directions (sta_models.metric_table)
METRIC_LABELS = metric_table.LABELS
LOWER_IS_BETTER = metric_table.LOWER_IS_BETTER
METHOD_LABELS = {"sta": "STA", "centre": "centre bias"}
MAX_BYTES = 50 * 1024 * 1024

Values = dict[str, float | None]


class EvaluationFileError(ValueError):
    """``metrics.json`` cannot be used; the message is one line, fit for a person."""


@dataclass
class MethodResult:
    """One method's dataset scores (unweighted mean over videos) and what it could not score."""

    method: str
    label: str
    values: Values
    frames_scored: int = 0
    frames_missing: int = 0
    frames_nan: int = 0
    videos_scored: int = 0
    nan_counts: dict[str, int] = field(default_factory=dict)
    unpredicted_videos: list[str] = field(default_factory=list)
    unmatched_videos: list[str] = field(default_factory=list)
    extra_frames: int = 0


@dataclass
class VideoResult:
    """One method's scores on one video (mean over its scored frames)."""

    video: str
    method: str
    values: Values
    frames_scored: int = 0
    frames_missing: int = 0
    frames_nan: int = 0


@dataclass
class AblationRow:
    """One intermediate output of the method scored against the true saliency."""

    method: str
    label: str
    group: str
    values: Values
    frames_scored: int = 0
    frames_missing: int = 0


@dataclass
class Ablation:
    """The paper's ablation: every branch's CAMs, the fusions, the pseudo-GT and STA on one frame set."""

    metrics: list[str]
    frames: str  # which frames were scored, in words
    rows: list[AblationRow] = field(default_factory=list)


@dataclass
class Strip:
    """A sprite sheet of one video: a row per second, panels side by side (frame | GT | STA | centre)."""

    video: str
    file: str  # relative to the evaluate stage's output folder
    seconds: list[int]
    panels: list[str]
    panel_height: int
    panel_width: int


@dataclass
class EvaluationResult:
    """What ``metrics.json`` holds; see the module docstring for the JSON."""

    dataset: list[MethodResult]
    videos: list[VideoResult]
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    protocol: str = "stavis"
    config: dict[str, Any] = field(default_factory=dict)
    ablation: Ablation | None = None
    strips: list[Strip] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def method(self, name: str) -> MethodResult | None:
        return next((m for m in self.dataset if m.method == name), None)

    def videos_of(self, method: str) -> list[VideoResult]:
        return [v for v in self.videos if v.method == method]

    def to_json(self) -> dict[str, Any]:
        return _clean(asdict(self))


def _clean(obj: Any) -> Any:
    """NaN/inf → None (strict JSON), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_evaluation(path: Path | str, result: EvaluationResult) -> Path:
    """Write ``result`` atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(result.to_json(), indent=1, allow_nan=False), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _values(raw: Any, where: str) -> Values:
    if not isinstance(raw, dict):
        raise EvaluationFileError(f"{where}: 'values' is not an object")
    out: Values = {}
    for k, v in raw.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise EvaluationFileError(f"{where}: value of {k!r} is not a number")
        out[str(k)] = None if v is None else float(v)
    return out


def _build(cls: type, raw: Any, where: str, nested: dict[str, Any] | None = None) -> Any:
    """``cls(**raw)`` with a one-line error naming ``where`` when a field is missing or unknown."""
    if not isinstance(raw, dict):
        raise EvaluationFileError(f"{where} is not an object")
    args = dict(raw)
    if "values" in args:
        args["values"] = _values(args["values"], where)
    for key, convert in (nested or {}).items():
        if args.get(key) is not None:
            args[key] = convert(args[key])
    try:
        return cls(**args)
    except TypeError as exc:
        raise EvaluationFileError(f"{where}: {exc}".replace("__init__() ", "")) from None


def _list(raw: Any, where: str) -> list[Any]:
    if not isinstance(raw, list):
        raise EvaluationFileError(f"{where} is not a list")
    return raw


def _ablation(raw: Any) -> Ablation:
    return _build(Ablation, raw, "ablation", {
        "rows": lambda rows: [_build(AblationRow, r, f"ablation row {i + 1}")
                              for i, r in enumerate(_list(rows, "ablation rows"))]})


def parse_evaluation(data: Any) -> EvaluationResult:
    """The typed result of a decoded ``metrics.json``; :class:`EvaluationFileError` when it is not one."""
    if not isinstance(data, dict):
        raise EvaluationFileError("metrics.json is not a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EvaluationFileError(
            f"metrics.json has schema version {version!r}; this version of stapipe reads only "
            f"{SCHEMA_VERSION} (re-run the evaluate stage)")
    return _build(EvaluationResult, data, "metrics.json", {
        "dataset": lambda rows: [_build(MethodResult, r, f"dataset row {i + 1}")
                                 for i, r in enumerate(_list(rows, "dataset"))],
        "videos": lambda rows: [_build(VideoResult, r, f"video row {i + 1}")
                                for i, r in enumerate(_list(rows, "videos"))],
        "ablation": _ablation,
        "strips": lambda rows: [_build(Strip, r, f"strip {i + 1}") for i, r in enumerate(_list(rows, "strips"))],
    })


def load_evaluation(path: Path | str) -> EvaluationResult:
    """Read ``metrics.json``; :class:`EvaluationFileError` (one line) when it is missing, too large,
    not JSON or not of a known schema version."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise EvaluationFileError(f"{path.name} does not exist") from None
    if size > MAX_BYTES:
        raise EvaluationFileError(f"{path.name} is larger than {MAX_BYTES // 2**20} MiB")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EvaluationFileError(f"{path.name} could not be read: {str(exc).splitlines()[0]}") from None
    return parse_evaluation(data)


def best_methods(rows: list[MethodResult] | list[AblationRow], metric: str) -> set[str]:
    """The methods with the best value of ``metric`` (ties all count; lower is better for KLD)."""
    vals = {r.method: r.values.get(metric) for r in rows}
    present = [v for v in vals.values() if v is not None]
    if not present:
        return set()
    best = min(present) if metric in LOWER_IS_BETTER else max(present)
    return {m for m, v in vals.items() if v is not None and math.isclose(v, best, rel_tol=0, abs_tol=1e-12)}
