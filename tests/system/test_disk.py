"""Disk usage per stage/pipeline and ``stapipe gc`` against a real database and real folders."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from db.models import Artefact, Pipeline, Stage, StageStatus
from stapipe_settings import get_settings
from worker import disk
from worker.cli import main
from worker.stages import KINDS

from .test_orchestration import _by_kind, _finish, _submit, dataset, session  # noqa: F401  (fixtures)


def _run_all(sess: Session, pid: int) -> None:
    for kind in KINDS:
        st = _by_kind(sess, pid)[kind]
        if st.status not in (StageStatus.SKIPPED, StageStatus.SUCCEEDED):
            _finish(sess, st)


def test_usage_counts_each_folder_once(session: Session, dataset: Path, recorder) -> None:  # noqa: F811
    first = _submit(session, dataset)
    _run_all(session, first.id)
    u = disk.pipeline_usage(session, first.id)
    sizes = session.scalars(select(Artefact.size)).all()
    assert u["bytes"] == sum(sizes) > 0 and u["reused_bytes"] == 0
    assert {s["kind"]: s["files"] for s in u["stages"]} == dict.fromkeys(KINDS, 1)
    again = _submit(session, dataset)  # everything reused: the bytes stay the first pipeline's
    u2 = disk.pipeline_usage(session, again.id)
    assert u2["bytes"] == 0 and u2["reused_bytes"] == u["bytes"]
    assert all(s["reused_from_id"] for s in u2["stages"])


def test_gc_dry_run_then_delete_orphans_and_intermediates(session: Session, dataset: Path, recorder, capsys,  # noqa: F811
                                                         sqlite_url: str, monkeypatch) -> None:
    monkeypatch.setenv("STAPIPE_DATABASE_URL", sqlite_url)  # the command line's database = the session's
    get_settings.cache_clear()
    root = get_settings().artefact_dir
    first = _submit(session, dataset)
    _run_all(session, first.id)
    foreign = root / "999" / "crops"  # a pipeline id this database never had: not touched
    foreign.mkdir(parents=True)
    orphan = root / str(first.id) / "old_kind"
    orphan.mkdir(parents=True)
    (orphan / "x.h5").write_bytes(b"0" * 1234)
    # a second pipeline, still running, reuses the first's stages up to the pseudo-GT
    running = _submit(session, dataset, sta__epochs=1)
    assert _by_kind(session, running.id)["train_sta"].status == StageStatus.QUEUED

    items = disk.plan(session, root)
    assert [(i.reason, Path(i.path), i.bytes) for i in items] == [("orphan", orphan, 1234)]
    assert disk.plan(session, root, intermediates=True) == items  # all in use by the running pipeline

    session.commit()  # the command opens its own connection (SQLite: one writer)
    assert main(["gc", "--dry-run", "--intermediates"]) == 0
    out = capsys.readouterr().out
    assert f"would delete {first.id}/old_kind  1.2 KiB  (no stage uses it)" in out and orphan.exists()

    _run_all(session, running.id)  # the running pipeline succeeds: its reused inputs are free now
    session.expire_all()
    assert session.get(Pipeline, running.id).status == "succeeded"
    items = disk.plan(session, root, intermediates=True)
    kinds = sorted(i.kind for i in items if i.reason == "intermediate")
    assert kinds == sorted(disk.INTERMEDIATE_KINDS)
    assert all(i.pipeline_id == first.id for i in items if i.reason == "intermediate")  # the reused folders

    # a failed pipeline that reuses them may re-run its STA stage: they all stay
    failed = _submit(session, dataset, sta__epochs=2)
    session.execute(update(Stage).where(Stage.pipeline_id == failed.id, Stage.kind == "train_sta")
                    .values(status=StageStatus.FAILED))
    session.execute(update(Pipeline).where(Pipeline.id == failed.id).values(status="failed"))
    session.commit()
    assert [i.reason for i in disk.plan(session, root, intermediates=True)] == ["orphan"]
    session.commit()  # the command opens its own connection (SQLite: one writer)
    assert main(["gc", "--intermediates"]) == 0
    assert f"deleted {first.id}/old_kind" in capsys.readouterr().out
    assert not orphan.exists() and foreign.is_dir()
    by = _by_kind(session, first.id)
    assert [k for k in KINDS if not Path(by[k].output_dir).is_dir()] == []

    session.execute(update(Pipeline).where(Pipeline.id == failed.id).values(status="cancelled"))
    session.commit()
    assert disk.plan(session, root, intermediates=True) == []  # a cancelled one can re-run too
    session.execute(delete(Stage).where(Stage.pipeline_id == failed.id))
    session.execute(delete(Pipeline).where(Pipeline.id == failed.id))
    session.commit()
    session.commit()  # the command opens its own connection (SQLite: one writer)
    assert main(["gc", "--intermediates"]) == 0
    out = capsys.readouterr().out
    assert f"deleted {first.id}/cams_fine" in out and "freed" in out
    session.expire_all()
    assert not Path(by["cams_fine"].output_dir).exists() and not Path(by["train_s_fine"].output_dir).exists()
    assert Path(by["extract"].output_dir).is_dir() and Path(by["train_sta"].output_dir).is_dir()
    assert Path(_by_kind(session, running.id)["train_sta"].output_dir).is_dir()
    assert session.scalars(select(Artefact).where(Artefact.stage_id == by["cams_fine"].id)).all() == []
    # a gc'ed stage is no longer a reuse source: an identical pipeline recomputes from there
    again = _submit(session, dataset)
    s = _by_kind(session, again.id)
    assert s["extract"].status == StageStatus.SKIPPED and s["train_s_coarse"].status == StageStatus.QUEUED
    session.commit()  # the command opens its own connection (SQLite: one writer)
    assert main(["gc", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip().endswith("would free 0 B in 0 folders")
