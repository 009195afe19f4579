"""Health checks on a finished training stage: problems that do not fail it but must be seen.

Why: a branch that never left chance, or whose CAMs are flat, still "succeeds", and the pseudo
ground truth then silently rests on the other branches. The checks run on the epoch history the
trainer already keeps; each warning is ``{"code", "message"}`` and goes into the stage record
(``record.json`` → the stage's summary in the database → API, pages, ``stapipe run``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeGuard

#: best val top-1 below this multiple of chance counts as "at chance"
CHANCE_MARGIN = 1.5
#: mean true-class CAM max/mean below this counts as "flat" (1.0 = perfectly uniform map)
FLAT_CAM_RATIO = 1.25


def _finite(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and math.isfinite(float(v))


def nan_warnings(history: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """A NaN/inf train loss, val loss or val metric in any epoch."""
    bad: list[str] = []
    for h in history:
        values = {"train_loss": h.get("train_loss"), "val_loss": h.get("val_loss"),
                  "val_accuracy": h.get("val_accuracy"), **dict(h.get("extra") or {})}
        for key, v in values.items():
            if v is not None and not _finite(v):
                bad.append(f"{key} in epoch {h.get('epoch')}")
    if not bad:
        return []
    more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
    return [{"code": "nan", "message": f"non-finite values: {', '.join(bad[:3])}{more}"}]


def branch_warnings(history: Sequence[dict[str, Any]], n_classes: int, name: str) -> list[dict[str, str]]:
    """At chance (best val top-1 < CHANCE_MARGIN × 1/n_classes), flat CAMs in the last epoch, NaNs."""
    out = nan_warnings(history)
    accs = [float(h["val_accuracy"]) for h in history if _finite(h.get("val_accuracy"))]
    if accs and n_classes > 1:
        chance = 1.0 / n_classes
        best = max(accs)
        if best < CHANCE_MARGIN * chance:
            out.append({"code": "at_chance", "message": (
                f"{name}: best val top-1 {best:.3f} is below {CHANCE_MARGIN:g}× chance "
                f"({chance:.3f}, {n_classes} classes) after {len(history)} epoch{'s' if len(history) != 1 else ''}")})
    if history:
        ratio = (history[-1].get("extra") or {}).get("cam_peak")
        if _finite(ratio) and float(ratio) < FLAT_CAM_RATIO:
            out.append({"code": "flat_cam", "message": (
                f"{name}: CAMs are flat (true-class max/mean {float(ratio):.2f} < {FLAT_CAM_RATIO:g}) "
                f"in epoch {history[-1].get('epoch')}")})
    return out
