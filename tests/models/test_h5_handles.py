"""The HDF5 handle cache: file identity, LRU bound, closed at the end of every stage task.

Feature files come from the real extraction (``synth_features``: ffmpeg → ``extract_video``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from sta_models import datasets as D


@pytest.fixture
def two_videos(synth_features: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """``a.h5`` (a copy of one extracted video) and two other extracted videos to replace it with."""
    first, second, third = sorted(synth_features.glob("*.h5"))[:3]
    target = tmp_path / "a.h5"
    shutil.copy(first, target)
    return target, second, third


def _frame(path: Path) -> np.ndarray:
    return D.open_h5(path)["frames"][0]


def test_replaced_file_is_read_again(two_videos: tuple[Path, Path, Path]) -> None:
    target, second, third = two_videos
    D.close_handles()
    before = _frame(target).copy()
    assert D.open_h5(target) is D.open_h5(target)  # unchanged file: the same handle
    staged = target.with_suffix(".tmp")
    shutil.copy(second, staged)
    os.replace(staged, target)  # how the pipeline writes files: a new inode under the old name
    after = _frame(target)
    with h5py.File(second, "r") as f:
        assert np.array_equal(after, f["frames"][0])
    assert not np.array_equal(before, after)
    assert D.open_handles() == 1  # the stale handle was closed, not kept beside the new one

    shutil.copyfile(third, target)  # rewritten in place (same inode, new size/mtime)
    with h5py.File(third, "r") as f:
        assert np.array_equal(_frame(target), f["frames"][0])
    assert D.open_handles() == 1
    D.close_handles()
    assert D.open_handles() == 0


def test_handles_are_bounded_lru(synth_features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    D.close_handles()
    monkeypatch.setattr(D, "MAX_HANDLES", 3)
    paths = sorted(synth_features.glob("*.h5"))[:5]
    assert len(paths) == 5
    handles = [D.open_h5(p) for p in paths[:3]]
    D.open_h5(paths[0])  # touch: paths[1] is now the least recently used
    D.open_h5(paths[3])
    assert D.open_handles() == 3
    assert not handles[1].id.valid and handles[0].id.valid and handles[2].id.valid
    D.open_h5(paths[4])
    assert not handles[2].id.valid and handles[0].id.valid
    D.close_handles()
    assert not handles[0].id.valid


def test_stage_task_closes_handles(synth_features: Path, tmp_path: Path) -> None:
    """execute_stage's final step closes what the stage body opened, whatever the outcome."""
    from worker.stage_runner import _close_h5_handles

    D.close_handles()
    D.open_h5(sorted(synth_features.glob("*.h5"))[0])
    assert D.open_handles() == 1
    _close_h5_handles()
    assert D.open_handles() == 0
