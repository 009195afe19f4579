"""The 13 stages of a pipeline (docs/architecture.md's table) and their input fingerprints."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sta_models.branches import BRANCHES

#: bump when a stage's code changes in a way that invalidates earlier outputs (reuse key)
CODE_VERSION = "1"


@dataclass(frozen=True)
class StageSpec:
    kind: str
    queue: str  # "cpu" | "gpu"
    depends_on: tuple[str, ...]
    config_keys: tuple[tuple[str, ...], ...]  # config sections hashed into the input hash


_COARSE = tuple(f"train_{b}_coarse" for b in BRANCHES)
_FINE = tuple(f"train_{b}_fine" for b in BRANCHES)

STAGES: tuple[StageSpec, ...] = (
    StageSpec("extract", "cpu", (), (("extract",),)),
    *(StageSpec(k, "gpu", ("extract",), (("split_seed",), ("coarse", k.split("_")[1]))) for k in _COARSE),
    StageSpec("cams_coarse", "gpu", _COARSE, (("extract", "size"),)),
    StageSpec("crops", "cpu", ("cams_coarse",), (("pseudo_gt",),)),
    *(StageSpec(k, "gpu", ("crops",), (("split_seed",), ("fine", k.split("_")[1]))) for k in _FINE),
    StageSpec("cams_fine", "gpu", _FINE, (("extract", "size"),)),
    StageSpec("pseudo_gt", "cpu", ("cams_fine",), (("pseudo_gt",),)),
    StageSpec("train_sta", "gpu", ("pseudo_gt",), (("split_seed",), ("sta",))),
    StageSpec("evaluate", "gpu", ("train_sta",), (("split_seed",), ("evaluate",))),
)
SPECS: dict[str, StageSpec] = {s.kind: s for s in STAGES}
KINDS: tuple[str, ...] = tuple(s.kind for s in STAGES)

#: stages a pipeline gets only on request (the dashboard's "Benchmark on STAViS sets" action)
OPTIONAL_STAGES: tuple[StageSpec, ...] = (StageSpec("benchmark", "gpu", ("train_sta",), (("evaluate",),)),)


def downstream_of(kind: str) -> list[str]:
    """``kind`` and every stage that depends on it, directly or not, in table order."""
    out = {kind}
    for spec in (*STAGES, *OPTIONAL_STAGES):  # topologically ordered
        if out.intersection(spec.depends_on):
            out.add(spec.kind)
    return [k for k in (*KINDS, *(s.kind for s in OPTIONAL_STAGES)) if k in out]


def _section(config: dict[str, Any], keys: tuple[str, ...]) -> Any:
    value: Any = config
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def dataset_fingerprint(dataset_root: str | Path) -> str:
    """Content hash of the annotation/split files plus (name, size, mtime) of every video.

    Hashing every video byte would make a submit of the real AVE (~4,000 videos) take minutes;
    size+mtime catches replaced files, which is what reuse has to notice.
    """
    root = Path(dataset_root)
    parts: list[Any] = [str(root.resolve())]
    for name in ("Annotations.txt", "trainSet.txt", "valSet.txt", "testSet.txt"):
        f = root / name
        parts.append([name, hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else None])
    videos = root / "AVE"
    if videos.is_dir():
        for f in sorted(videos.iterdir()):
            if f.is_file():
                st = f.stat()
                parts.append([f.name, st.st_size, st.st_mtime_ns])
    return _digest(parts)


def input_hashes(config: dict[str, Any], dataset_fp: str) -> dict[str, str]:
    """Input hash per stage: its config sections + the hashes of its upstream stages (Merkle chain),
    so a stage is reusable exactly when its own settings and everything upstream are unchanged."""
    out: dict[str, str] = {}
    for spec in STAGES:
        payload = {
            "kind": spec.kind,
            "code": CODE_VERSION,
            "config": [_section(config, k) for k in spec.config_keys],
            "upstream": [out[d] for d in spec.depends_on],
            "dataset": dataset_fp if spec.kind == "extract" else None,
        }
        out[spec.kind] = _digest(payload)
    return out


__all__ = ["StageSpec", "STAGES", "OPTIONAL_STAGES", "SPECS", "KINDS", "downstream_of", "dataset_fingerprint", "input_hashes"]
