"""Preview images grouped for people: per video (row key), per branch, per second.

The CAM stages write ``<stage>/<branch>/previews/<row key>_<second>.png``, the pseudo-GT stage
``<stage>/previews/<row key>_s<second>.png``; anything else named differently stays in a plain
gallery. The page shows one strip per video with a time slider over its seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from sta_models.branches import BRANCHES as BRANCH_SPECS

BRANCHES = {name: spec.label for name, spec in BRANCH_SPECS.items()}  # CAM folder → column label
STAGE_LABELS = {"pseudo_gt": "pseudo-GT", "crops": "crop", "evaluate": "prediction"}
_NAME = re.compile(r"^(?P<key>.+?)_s?(?P<sec>\d{2,})$")


@dataclass
class VideoPreviews:
    key: str
    seconds: list[int] = field(default_factory=list)
    # column label ("S", "SA", "pseudo-GT") → second → {"url", "caption"}
    columns: dict[str, dict[int, dict[str, str]]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "seconds": self.seconds,
                "columns": {c: {str(s): v for s, v in by.items()} for c, by in self.columns.items()}}


def column_of(rel_path: str, stage_kind: str) -> str:
    parts = PurePosixPath(rel_path).parts
    if len(parts) >= 3 and parts[-2] == "previews" and parts[-3] in BRANCHES:
        return BRANCHES[parts[-3]]
    return STAGE_LABELS.get(stage_kind, stage_kind)


def group_previews(previews: list[dict[str, Any]], stage_kind: str) -> tuple[list[VideoPreviews], list[dict[str, Any]]]:
    """(per-video groups in key order, previews whose names do not say video and second)."""
    videos: dict[str, VideoPreviews] = {}
    other = []
    for a in previews:
        m = _NAME.match(PurePosixPath(a["name"]).stem)
        if not m:
            other.append(a)
            continue
        key, sec = m.group("key"), int(m.group("sec"))
        col = column_of(a["path"], stage_kind)
        v = videos.setdefault(key, VideoPreviews(key))
        v.columns.setdefault(col, {})[sec] = {"url": a["url"], "caption": f"{col} · {key} · second {sec}"}
    for v in videos.values():
        v.seconds = sorted({s for by in v.columns.values() for s in by})
        v.columns = dict(sorted(v.columns.items(), key=lambda kv: list(BRANCHES.values()).index(kv[0])
                                if kv[0] in BRANCHES.values() else 99))
    return [videos[k] for k in sorted(videos)], other


def artefact_groups(artefacts: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]], int]]:
    """(kind, artefacts, total size) in a stable order: the small, important kinds first."""
    order = ("checkpoint", "metrics", "report", "video", "prediction", "pseudo_gt", "cams", "crops", "features",
             "preview", "log")
    kinds: dict[str, list[dict[str, Any]]] = {}
    for a in artefacts:
        kinds.setdefault(a["kind"], []).append(a)
    ranked = sorted(kinds, key=lambda k: (order.index(k) if k in order else len(order), k))
    return [(k, kinds[k], sum(a["size"] for a in kinds[k])) for k in ranked]
