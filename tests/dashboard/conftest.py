"""Fixtures for the dashboard tests: settings in a temp home, a migrated database (SQLite, and
PostgreSQL for the API tests), a Flask test client logged in or not, and builders for rows.

Celery is never touched: the orchestration's dispatcher is replaced by a recorder, so "enqueued"
means "a message would have been sent".
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from db.models import Artefact, EpochMetric, ExtractionItem, Pipeline, Stage
from db.session import make_engine
from stapipe_settings import Settings
from tests.conftest import DispatchRecorder, fresh_pg_database, require_servers
from worker.stages import GRAPH

TOKEN = "test-token-0123456789"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    require_servers(postgres=True)
    from db.migrate import upgrade

    with fresh_pg_database("stapipe_dash") as url:
        upgrade(url)
        yield url


def _truncate_pg(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE pipelines, stages, extraction_items, epoch_metrics, artefacts, "
                          "auth_sessions, auth_failures RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which database the test runs on; API tests re-parametrize with ``postgres``."""
    return request.param


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "postgres":
        url = request.getfixturevalue("pg_url")
        _truncate_pg(url)
        return url
    url = f"sqlite:///{tmp_path / 'home' / 'stapipe.db'}"
    from db.migrate import upgrade

    upgrade(url)
    return url


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    home = tmp_path / "home"
    (home / "data" / "ave-synth").mkdir(parents=True, exist_ok=True)
    (home / "artefacts").mkdir(exist_ok=True)
    (home / "logs").mkdir(exist_ok=True)
    return Settings(home=home, database_url=db_url, dashboard_password=TOKEN, secret_key="s" * 64)


Sent = DispatchRecorder


@pytest.fixture
def sent(dispatched: DispatchRecorder) -> DispatchRecorder:
    """Messages the orchestration would have sent to Celery."""
    return dispatched


@pytest.fixture
def app(settings: Settings, sent: Sent) -> Iterator[Flask]:
    from dashboard.app import create_app

    app = create_app(settings, testing=True)
    yield app
    app.extensions["stapipe_engine"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Not logged in."""
    return app.test_client()


def login(client: FlaskClient, password: str = TOKEN) -> Any:
    client.get("/login")
    with client.session_transaction() as sess:
        csrf = sess["csrf"]
    return client.post("/login", data={"password": password, "csrf_token": csrf, "next": "/"})


def csrf_of(client: FlaskClient) -> str:
    with client.session_transaction() as sess:
        return sess["csrf"]


@pytest.fixture
def browser_client(client: FlaskClient) -> FlaskClient:
    """Logged in through the form (session cookie)."""
    response = login(client)
    assert response.status_code == 302
    return client


@pytest.fixture
def api(client: FlaskClient) -> FlaskClient:
    """Sends the bearer token with every request."""
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return client


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    """The test's own session. On SQLite it runs in autocommit mode (no BEGIN at all), so rows the
    test reads never hold a lock or a stale snapshot while the app under test writes."""
    engine = make_engine(settings.db_url)
    if engine.dialect.name == "sqlite":
        from db import session as db_session_module

        begin = getattr(db_session_module, "_sqlite_begin", None)
        if begin is not None and event.contains(engine, "begin", begin):
            event.remove(engine, "begin", begin)
    s = Session(bind=engine, expire_on_commit=False)
    yield s
    s.close()
    engine.dispose()


KINDS = GRAPH.kinds  # every pipeline's stage rows, from the stage registry


def make_pipeline(session: Session, settings: Settings, *, name: str = "p", statuses: dict[str, str] | None = None,
                  created: datetime | None = None, epochs: dict[str, int] | None = None) -> Pipeline:
    """A pipeline with its stages written directly (no orchestration), for read-side tests."""

    created = created or datetime.now(UTC)
    p = Pipeline(name=name, dataset_root=str(settings.data_dir / "ave-synth"), config={"preset": "tiny"},
                 status="running", created_at=created, started_at=created, submitted_by="test")
    session.add(p)
    session.flush()
    statuses = statuses or {}
    for i, kind in enumerate(KINDS):
        st = statuses.get(kind, "pending")
        s = Stage(pipeline_id=p.id, kind=kind, position=i, status=st, queue=str(GRAPH[kind].queue),
                  depends_on=list(GRAPH[kind].depends_on), attempts=1 if st != "pending" else 0,
                  started_at=created if st != "pending" else None,
                  finished_at=created + timedelta(seconds=90) if st in ("succeeded", "failed") else None,
                  log_path=str(settings.log_dir / str(p.id) / f"{kind}.log"),
                  output_dir=str(settings.artefact_dir / str(p.id) / kind))
        session.add(s)
    session.flush()
    for kind, n in (epochs or {}).items():
        stage = next(s for s in p.stages if s.kind == kind)
        add_epochs(session, stage, 1, n)
    session.commit()
    return p


def add_epochs(session: Session, stage: Stage, first: int, last: int) -> None:
    for e in range(first, last + 1):
        session.add(EpochMetric(stage_id=stage.id, epoch=e, train_loss=1.0 / e, val_loss=1.2 / e,
                                val_accuracy=min(1.0, 0.1 * e), lr=0.01, seconds=1.5,
                                extra={"cc": 0.1 * e, "note": "x"}))
    session.commit()


def stage_of(p: Pipeline, kind: str) -> Stage:
    return next(s for s in p.stages if s.kind == kind)


def add_artefact(session: Session, settings: Settings, stage: Stage, rel: str, data: bytes, kind: str = "preview"
                 ) -> Artefact:
    path = settings.artefact_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    a = Artefact(stage_id=stage.id, kind=kind, path=str(path), size=len(data), sha256="0" * 64)
    session.add(a)
    session.commit()
    return a


def add_item(session: Session, stage: Stage, video_id: str, status: str, reason: str | None = None) -> None:
    session.add(ExtractionItem(stage_id=stage.id, pipeline_id=stage.pipeline_id, video_id=video_id,
                               status=status, reason=reason))
    session.commit()


def install_evaluation(session: Session, settings: Settings, p: Pipeline, real: Any) -> Stage:
    """Copy a real evaluate output (tests/real_evaluation.py) into ``p``'s evaluate folder and record
    its files with the worker's own recorder, as a finished evaluate stage leaves them."""
    import shutil

    from worker.artefacts import record_folder

    stage = stage_of(p, "evaluate")
    shutil.copytree(real.evaluate_dir, Path(stage.output_dir), dirs_exist_ok=True)
    record_folder(session, stage.id, GRAPH["evaluate"], Path(stage.output_dir))
    session.commit()
    return stage
