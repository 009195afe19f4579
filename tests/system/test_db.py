"""Models and migrations on SQLite and PostgreSQL: `upgrade head` gives exactly the models' schema."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from db.migrate import current, upgrade
from db.models import Base, EpochMetric, Pipeline, Stage
from db.session import make_engine, session_scope
from worker.stage_runner import upsert_epoch


def _diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()


def _head() -> str:
    from alembic.script import ScriptDirectory

    from db.migrate import alembic_config

    return str(ScriptDirectory.from_config(alembic_config()).get_current_head())


def _check_schema(url: str) -> None:
    assert current(url) is None
    upgrade(url)
    assert current(url) == _head()
    assert _diff(url) == []
    upgrade(url)  # idempotent: a second worker/dashboard start changes nothing
    engine = make_engine(url)
    names = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"pipelines", "stages", "extraction_items", "epoch_metrics", "artefacts", "workers",
            "alembic_version"} <= names


def _check_rows(url: str) -> None:
    with session_scope(url) as s:
        p = Pipeline(name="p", dataset_root="/d", config={"preset": "tiny"})
        s.add(p)
        s.flush()
        st = Stage(pipeline_id=p.id, kind="train_s_coarse", queue="gpu", depends_on=["extract"])
        s.add(st)
        s.flush()
        for epoch, loss in ((1, 2.0), (2, 1.5), (1, 1.9)):  # epoch 1 again: a resumed stage
            upsert_epoch(s, st.id, {"epoch": epoch, "train_loss": loss, "extra": {"cc": 0.1}})
        stage_id = st.id
    with session_scope(url) as s:
        rows = s.scalars(select(EpochMetric).where(EpochMetric.stage_id == stage_id).order_by(EpochMetric.epoch)).all()
        assert [(r.epoch, r.train_loss) for r in rows] == [(1, 1.9), (2, 1.5)]
        assert rows[0].extra == {"cc": 0.1}
        assert s.get(Stage, stage_id).depends_on == ["extract"]
    with pytest.raises(IntegrityError), session_scope(url) as s:
        s.add(EpochMetric(stage_id=stage_id, epoch=2, train_loss=0.0))
    with session_scope(url) as s:  # cascade: deleting a pipeline deletes its stages and epochs
        s.delete(s.get(Pipeline, s.get(Stage, stage_id).pipeline_id))
    with session_scope(url) as s:
        assert s.scalar(select(EpochMetric).limit(1)) is None


def test_sqlite_migrations_match_models(sqlite_url: str) -> None:
    _check_schema(sqlite_url)
    _check_rows(sqlite_url)


@pytest.mark.postgres
def test_postgres_migrations_match_models(pg_url: str) -> None:
    _check_schema(pg_url)
    _check_rows(pg_url)


def test_sqlite_pragmas(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    engine.dispose()


def test_the_dash_migration_renames_skipped_stages_to_reused(sqlite_url: str) -> None:
    from sqlalchemy import text

    upgrade(sqlite_url, "0001")
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO pipelines (id, name, dataset_root, config, status, created_at, submitted_by) "
                          "VALUES (1, 'p', '/d', '{}', 'succeeded', '2026-01-01', 'x')"))
        conn.execute(text("INSERT INTO stages (pipeline_id, kind, position, status, queue, depends_on, attempts, "
                          "attempts_base, updated_at, cancel_requested, progress_done, progress_failed, "
                          "progress_total) VALUES (1, 'extract', 0, 'skipped', 'cpu', '[]', 0, 0, '2026-01-01', "
                          "0, 0, 0, 0)"))
    engine.dispose()
    upgrade(sqlite_url, "0004_dash")
    with session_scope(sqlite_url) as s:
        assert s.scalars(select(Stage.status)).all() == ["reused"]
