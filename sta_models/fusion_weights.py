"""How much each branch's CAM counts in the pseudo-GT fusion: SPEC §5, or contrast-weighted from scratch.

SPEC §5 weights a branch's CAM by its probability for the true class. From random init on the
demo data, SA and ST classify well (val top-1 0.7–1.0) but their CAMs do not find the object
(coarse CC against the true saliency ≈ 0.2, below the centre baseline, and near-equal towards the
silent distractor: docs/method-notes.md, "CAM fusion from scratch"), so probability weights let
them pull the fusion off S's map. ``contrast`` multiplies the probability by the CAM's own
peak-to-mean contrast, max/mean − 1: 0 for a flat map, large for a peaked one, invariant to the
map's scale (the fusion min-max-normalises anyway), computed without the truth. It is used only
when a phase's networks started from random init (``resolve_weighting``); pretrained runs keep
SPEC §5 exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

PROBABILITY = "probability"  # SPEC §5
CONTRAST = "contrast"  # probability × (max/mean − 1) of the branch's CAM (from-scratch runs)
WEIGHTINGS = (PROBABILITY, CONTRAST)


def cam_contrast(cam: np.ndarray) -> float:
    """max/mean − 1 of a non-negative CAM; 0 for a flat or all-zero map."""
    hi, mean = float(cam.max()), float(cam.mean(dtype=np.float64))
    if not mean > 0 or hi <= float(cam.min()):
        return 0.0
    return max(hi / mean - 1.0, 0.0)


def branch_weight(prob: float, cam: np.ndarray, weighting: str) -> float:
    """A branch's fusion weight for one frame (``cam`` as the branch produced it: the crop's CAM
    for fine maps, before pasting, so a box's size does not count as contrast)."""
    if weighting == PROBABILITY:
        return float(prob)
    if weighting == CONTRAST:
        return float(prob) * cam_contrast(cam)
    raise ValueError(f"unknown fusion weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


def resolve_weighting(setting: str, train_records: Iterable[Path]) -> str:
    """``auto`` → ``contrast`` when a branch of the phase trained from random init (its
    ``record.json`` lists ``random_init``), else ``probability``; an explicit setting is kept."""
    if setting != "auto":
        return setting
    for path in train_records:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if record.get("random_init"):
            return CONTRAST
    return PROBABILITY
