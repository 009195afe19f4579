"""Fixtures shared by every test area. Area-specific fixtures live in each folder's conftest."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"

# Two cores for the whole suite: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave things for people to look at (screenshots, previews)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def ffmpeg_bin() -> str:
    path = shutil.which("ffmpeg")
    assert path, "ffmpeg is required (make install puts Debian's ffmpeg on the machine)"
    return path


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic AVE-layout dataset (SPEC §8), generated once per test session."""
    from sta_models.synth import generate

    return generate(
        tmp_path_factory.mktemp("synth") / "ave", classes=3, videos_per_class=4, seconds=4, size=(128, 96), seed=0
    )


@pytest.fixture(scope="session")
def synth_features(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic dataset extracted to per-video HDF5 files at the ``tiny`` preset's size."""
    from sta_models.ave import load_dataset
    from sta_models.extraction import extract_video

    out = tmp_path_factory.mktemp("features")
    dataset = load_dataset(synth_root)
    for video_id in sorted({row.video_id for row in dataset.rows}):
        extract_video(dataset.video_path(video_id), out / f"{video_id}.h5", size=112, video_id=video_id)
    return out


@dataclass
class DispatchRecorder:
    """Stands in for the Celery send in orchestration tests: records (what, id, queue, token)."""

    messages: list[tuple[str, int, str, str]] = field(default_factory=list)

    def __call__(self, what: str, obj_id: int, queue: str, token: str) -> None:
        self.messages.append((what, obj_id, queue, token))


@pytest.fixture
def dispatched() -> Iterator[DispatchRecorder]:
    """Orchestration sends go to a recorder instead of the broker for the test's duration."""
    from worker import orchestration

    recorder = DispatchRecorder()
    old = orchestration.set_dispatcher(recorder)
    try:
        yield recorder
    finally:
        orchestration.set_dispatcher(old)
