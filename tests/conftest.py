"""Fixtures shared by every test area. Area-specific fixtures live in each folder's conftest."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"

# Two cores for the whole suite: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")

# The machine's real servers (`.ci/run` starts them when they are down).
PG_ADMIN_URL = os.environ.get("STAPIPE_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("STAPIPE_TEST_REDIS", "redis://127.0.0.1:6379")


def pg_available() -> bool:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001
        return False


def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_BASE, socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001
        return False


def require_servers(postgres: bool = True, redis: bool = False) -> None:
    """Fail, never skip, when a real server a test needs is down: a skip would hide it in CI."""
    if postgres and not pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (start it; .ci/run does)")
    if redis and not redis_available():
        pytest.fail(f"Redis is not reachable at {REDIS_BASE} (start it; .ci/run does)")


@contextlib.contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """CREATE DATABASE for a test (or a session), DROP … WITH (FORCE) afterwards."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        from db.session import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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


@pytest.fixture(scope="session")
def real_evaluation(synth_root: Path, synth_features: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real evaluate-stage output (metrics.json with ablation, strips, overlays) on the synthetic
    set; see tests/real_evaluation.py for what is real (all but the branch networks)."""
    from tests.real_evaluation import make_real_evaluation

    return make_real_evaluation(synth_root, synth_features, tmp_path_factory.mktemp("pipeline"))
