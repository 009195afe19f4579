"""STA training samples (SPEC §3 "Samples", §6): three frames, their audio and their pseudo-GT.

A sample is one event second t of one row that has a pseudo-GT. Its neighbours t−1 and t+1 are
clamped to the event ``[start, end)`` (and to the feature file's length); image, audio and target
of a neighbour always come from the same second. **A neighbour second without a pseudo-GT is
treated like an event edge**: it is replaced by the centre second t (image, audio *and* target from
t), so no frame is ever paired with another second's target and no labelled centre second is lost.
The number of such replacements is counted.

Frames are the ORIGINAL extracted frames (``datasets.feature_path``: the extraction directory, not
the fine-stage crops) squashed to ``input_size``; targets are the pseudo-GT maps
(``<pseudo_gt_dir>/<row.key>.h5``: ``maps`` [n, H, W] float16, ``seconds`` [n] = absolute seconds
of the video) resized to ``input_size``. Seconds whose audio is invalid keep their all-zero
spectrogram (the pseudo-GT already decided whether the second is usable). Train-time colour jitter
is drawn once per sample for all three frames from the sampler's ``aug_seed``
(``datasets.color_jitter``); nothing is augmented at evaluation. Rows whose event is shorter than
3 s (``MIN_EVENT_SECONDS``) are skipped and counted.

Items are default-collatable dicts: ``frames`` [3, 3, S, S] uint8 (time order t−1, t, t+1; turned
into normalised floats on the device by ``datasets.prepare_batch``), ``audios`` [3, 1, 81, 199]
float32, ``target`` [3, S, S] float32 in [0, 1], ``row`` and ``second``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from sta_models.ave import AnnotationRow
from sta_models.branches import TEMPORAL_MIN_EVENT_S
from sta_models.datasets import color_jitter, feature_path, open_h5, resize_frames

MIN_EVENT_SECONDS = TEMPORAL_MIN_EVENT_S  # 3 s: the same window t−1, t, t+1 as the ST branch (SPEC §3)


@dataclass(frozen=True)
class StaSample:
    """One sample: ``seconds`` = (t−1, t, t+1) after clamping and the no-target rule."""

    row_index: int
    seconds: tuple[int, int, int]
    gt_index: tuple[int, int, int]  # positions of those seconds in the pseudo-GT file


@dataclass
class StaIndex:
    """The samples of a split and what was left out (goes into the stage record)."""

    samples: list[StaSample] = field(default_factory=list)
    excluded: Counter[str] = field(default_factory=Counter)
    neighbours_replaced: int = 0  # neighbour seconds without a pseudo-GT, replaced by the centre

    def summary(self) -> dict[str, int]:
        out = {k: int(v) for k, v in sorted(self.excluded.items()) if v}
        if self.neighbours_replaced:
            out["neighbours_replaced_by_centre"] = self.neighbours_replaced
        return out


def neighbour_seconds(t: int, first: int, last: int) -> tuple[int, int, int]:
    """(t−1, t, t+1) clamped to ``[first, last]``."""
    return max(t - 1, first), t, min(t + 1, last)


def build_index(rows: Sequence[AnnotationRow], feature_dir: Path, pseudo_gt_dir: Path) -> StaIndex:
    """Every (row, second) with a pseudo-GT; short rows, missing files and seconds are counted."""
    index = StaIndex()
    for i, row in enumerate(rows):
        if row.end - row.start < MIN_EVENT_SECONDS:
            index.excluded["short_event_rows"] += 1
            continue
        gt_file = Path(pseudo_gt_dir) / f"{row.key}.h5"
        feat_file = feature_path(feature_dir, row)
        if not feat_file.exists():
            index.excluded["missing_feature_rows"] += 1
            continue
        if not gt_file.exists():
            index.excluded["missing_pseudo_gt_rows"] += 1
            continue
        with h5py.File(feat_file, "r") as f:
            n_frames = int(f["frames"].shape[0])
        with h5py.File(gt_file, "r") as f:
            secs = [int(s) for s in f["seconds"][()]]
        first, last = row.start, min(row.end, n_frames) - 1
        pos = {s: j for j, s in enumerate(secs)}
        index.excluded["event_seconds_without_pseudo_gt"] += sum(
            1 for s in range(first, last + 1) if s not in pos)
        for t in secs:
            if not first <= t <= last:
                index.excluded["pseudo_gt_seconds_outside_event"] += 1
                continue
            chosen = []
            for s in neighbour_seconds(t, first, last):
                if s not in pos:
                    index.neighbours_replaced += 1
                    s = t
                chosen.append(s)
            index.samples.append(StaSample(i, (chosen[0], chosen[1], chosen[2]),
                                           (pos[chosen[0]], pos[chosen[1]], pos[chosen[2]])))
    return index


def resize_targets(maps: np.ndarray, size: int) -> torch.Tensor:
    """Maps [N, H, W] (float16 on disk) → float32 [N, size, size] ≥ 0 (area filter when shrinking)."""
    maps = np.asarray(maps, dtype=np.float32)
    n, h, w = maps.shape
    if (h, w) != (size, size):
        interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
        maps = np.stack([cv2.resize(m, (size, size), interpolation=interp) for m in maps])
    return torch.from_numpy(np.ascontiguousarray(maps)).clamp_min_(0.0)


class StaDataset(Dataset):
    """STA samples of some rows; see the module docstring for the items."""

    def __init__(self, rows: Sequence[AnnotationRow], feature_dir: str | Path, pseudo_gt_dir: str | Path,
                 input_size: int, *, train: bool = False) -> None:
        self.rows = list(rows)
        self.feature_dir, self.pseudo_gt_dir = Path(feature_dir), Path(pseudo_gt_dir)
        self.input_size, self.train = input_size, train
        self.index = build_index(self.rows, self.feature_dir, self.pseudo_gt_dir)
        self.samples = self.index.samples

    def __len__(self) -> int:
        return len(self.samples)

    def exclusions(self) -> dict[str, int]:
        return self.index.summary()

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, aug_seed = item if isinstance(item, tuple | list) else (int(item), None)
        sample = self.samples[index]
        row = self.rows[sample.row_index]
        feats = open_h5(feature_path(self.feature_dir, row))
        gts = open_h5(self.pseudo_gt_dir / f"{row.key}.h5")
        secs = list(sample.seconds)
        lo, hi = min(secs), max(secs)
        pick = [s - lo for s in secs]
        frames = resize_frames(feats["frames"][lo : hi + 1][pick], self.input_size)
        if self.train and aug_seed is not None:
            frames = color_jitter(frames, aug_seed)  # one draw for the three frames
        audio = np.asarray(feats["audio"][lo : hi + 1][pick], dtype=np.float32)
        g_lo, g_hi = min(sample.gt_index), max(sample.gt_index)
        target = gts["maps"][g_lo : g_hi + 1][[j - g_lo for j in sample.gt_index]]
        return {
            "frames": frames,
            "audios": torch.from_numpy(np.ascontiguousarray(audio)).unsqueeze(1),
            "target": resize_targets(target, self.input_size),
            "row": sample.row_index,
            "second": sample.seconds[1],
        }
