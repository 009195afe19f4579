"""The orchestration state machine against a real database, with Celery replaced by a recorder."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.migrate import upgrade
from db.models import Artefact, Pipeline, Stage, StageStatus, utcnow
from db.session import session_factory
from sta_models.config import preset
from worker import orchestration as orch
from worker.stage_runner import claim_stage
from worker.stages import KINDS


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    (root / "AVE").mkdir(parents=True)
    (root / "Annotations.txt").write_text("Category&VideoID&Quality&StartTime&EndTime\n")
    (root / "AVE" / "v1.mp4").write_bytes(b"x")
    return root


@pytest.fixture
def session(home: Path, sqlite_url: str) -> Session:
    upgrade(sqlite_url)
    s = session_factory(sqlite_url)()
    yield s
    s.close()


def _submit(session: Session, dataset: Path, **cfg_changes: object) -> Pipeline:
    cfg = preset("tiny").model_dump(mode="json")
    for key, value in cfg_changes.items():
        section, field = key.split("__")
        cfg[section][field] = value
    return orch.submit_pipeline(session, name="t", dataset_root=dataset, config=cfg, submitted_by="test")


def _by_kind(session: Session, pipeline_id: int) -> dict[str, Stage]:
    session.expire_all()
    return {s.kind: s for s in session.scalars(select(Stage).where(Stage.pipeline_id == pipeline_id).order_by(Stage.position))}


def _finish(session: Session, stage: Stage, status: str = StageStatus.SUCCEEDED, files: bool = True) -> None:
    if files and stage.output_dir:
        out = Path(stage.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        f = out / "result.json"
        f.write_text(stage.kind)
        session.add(Artefact(stage_id=stage.id, kind="report", path=str(f), size=f.stat().st_size, sha256="0" * 64))
    session.execute(update(Stage).where(Stage.id == stage.id).values(status=status, finished_at=utcnow()))
    session.commit()
    orch.advance(session, stage.pipeline_id)


def _queued(session: Session, pid: int) -> set[str]:
    return {k for k, s in _by_kind(session, pid).items() if s.status == StageStatus.QUEUED}


def test_submit_and_advance_in_dependency_order(session: Session, dataset: Path, recorder) -> None:
    p = _submit(session, dataset)
    stages = _by_kind(session, p.id)
    assert list(stages) == list(KINDS) and len(stages) == 13
    assert stages["extract"].status == StageStatus.QUEUED
    assert all(s.status == StageStatus.PENDING for k, s in stages.items() if k != "extract")
    assert recorder.messages == [("stage", stages["extract"].id, "cpu", stages["extract"].celery_task_id)]
    assert orch.advance(session, p.id) == []  # nothing new: never enqueued twice

    _finish(session, stages["extract"])
    assert _queued(session, p.id) == {"train_s_coarse", "train_sa_coarse", "train_st_coarse"}
    assert {m[2] for m in recorder.messages[1:]} == {"gpu"}
    s = _by_kind(session, p.id)
    _finish(session, s["train_s_coarse"])
    _finish(session, s["train_sa_coarse"])
    assert "cams_coarse" not in _queued(session, p.id)  # still waits for ST
    _finish(session, s["train_st_coarse"])
    assert _queued(session, p.id) == {"cams_coarse"}
    for kind in KINDS[4:]:
        s = _by_kind(session, p.id)
        if s[kind].status == StageStatus.QUEUED:
            _finish(session, s[kind])
    s = _by_kind(session, p.id)
    assert all(st.status == StageStatus.SUCCEEDED for st in s.values()), {k: v.status for k, v in s.items()}
    session.expire_all()
    pipe = session.get(Pipeline, p.id)
    assert pipe.status == "succeeded" and pipe.finished_at is not None
    assert len(recorder.messages) == 13


def test_rerun_plan_and_rerun_only_failed_stage(session: Session, dataset: Path, recorder) -> None:
    p = _submit(session, dataset)
    s = _by_kind(session, p.id)
    _finish(session, s["extract"])
    s = _by_kind(session, p.id)
    _finish(session, s["train_s_coarse"])
    _finish(session, s["train_sa_coarse"], status=StageStatus.FAILED)
    _finish(session, s["train_st_coarse"])
    session.expire_all()
    assert session.get(Pipeline, p.id).status == "failed"

    plan = [st.kind for st in orch.rerun_plan(session, s["train_sa_coarse"].id)]
    assert plan == ["train_sa_coarse", "cams_coarse", "crops", "train_s_fine", "train_sa_fine", "train_st_fine",
                    "cams_fine", "pseudo_gt", "train_sta", "evaluate"]
    with pytest.raises(orch.OrchestrationError):
        orch.rerun_stage(session, s["train_s_coarse"].id)  # succeeded: not re-runnable

    sent_before = len(recorder.messages)
    orch.rerun_stage(session, s["train_sa_coarse"].id)
    s = _by_kind(session, p.id)
    assert s["train_sa_coarse"].status == StageStatus.QUEUED
    assert {k for k, st in s.items() if st.status == StageStatus.SUCCEEDED} == {
        "extract", "train_s_coarse", "train_st_coarse"}  # upstream and siblings untouched
    assert [m[1] for m in recorder.messages[sent_before:]] == [s["train_sa_coarse"].id]
    session.expire_all()
    assert session.get(Pipeline, p.id).status == "running"


def test_cancel_queued_stage_never_starts(session: Session, sqlite_url: str, dataset: Path, recorder) -> None:
    p = _submit(session, dataset)
    extract = _by_kind(session, p.id)["extract"]
    token = extract.celery_task_id
    orch.cancel_stage(session, extract.id)
    session.expire_all()
    assert session.get(Stage, extract.id).status == StageStatus.CANCELLED
    # the message is still in the broker; the worker that gets it must not start the stage
    assert claim_stage(session, extract.id, token, "w@test", max_attempts=3) is None
    session.expire_all()
    st = session.get(Stage, extract.id)
    assert st.status == StageStatus.CANCELLED and st.attempts == 0
    assert session.get(Pipeline, p.id).status == "cancelled"


def test_cancel_pipeline_flags_running_and_cancels_pending(session: Session, dataset: Path, recorder) -> None:
    p = _submit(session, dataset)
    extract = _by_kind(session, p.id)["extract"]
    assert claim_stage(session, extract.id, extract.celery_task_id, "w@test", 3) is not None
    orch.cancel_pipeline(session, p.id)
    s = _by_kind(session, p.id)
    assert s["extract"].status == StageStatus.RUNNING and s["extract"].cancel_requested
    assert all(st.status == StageStatus.CANCELLED for k, st in s.items() if k != "extract")
    assert session.get(Pipeline, p.id).status == "running"  # until the running stage stops


def test_resubmission_reuses_unchanged_stages(session: Session, dataset: Path, recorder) -> None:
    first = _submit(session, dataset)
    for kind in KINDS:
        _finish(session, _by_kind(session, first.id)[kind])
    same = _submit(session, dataset)
    s = _by_kind(session, same.id)
    assert all(st.status == StageStatus.SKIPPED and st.reused_from_id for st in s.values())
    assert s["extract"].output_dir == _by_kind(session, first.id)["extract"].output_dir
    session.expire_all()
    assert session.get(Pipeline, same.id).status == "succeeded"
    assert session.get(Pipeline, same.id).reused_from_id == first.id

    changed = _submit(session, dataset, sta__epochs=1)
    s = _by_kind(session, changed.id)
    assert {k for k, st in s.items() if st.status != StageStatus.SKIPPED} == {"train_sta", "evaluate"}
    assert s["train_sta"].status == StageStatus.QUEUED
    assert s["pseudo_gt"].reused_from_id == _by_kind(session, first.id)["pseudo_gt"].id


def test_reuse_needs_outputs_on_disk(session: Session, dataset: Path, recorder) -> None:
    first = _submit(session, dataset)
    for kind in KINDS:
        _finish(session, _by_kind(session, first.id)[kind])
    Path(_by_kind(session, first.id)["crops"].output_dir, "result.json").unlink()
    again = _submit(session, dataset)
    s = _by_kind(session, again.id)
    assert {k for k, st in s.items() if st.status == StageStatus.SKIPPED} == set(KINDS[:5])
    assert s["crops"].status == StageStatus.QUEUED


def test_recover_stale_requeues_dead_running_stage(session: Session, dataset: Path, recorder) -> None:
    p = _submit(session, dataset)
    extract = _by_kind(session, p.id)["extract"]
    _finish(session, extract)
    train = _by_kind(session, p.id)["train_s_coarse"]
    old_token = train.celery_task_id
    assert claim_stage(session, train.id, old_token, "gpu0@host", 3) is not None
    assert orch.recover_stale(session, stale_after_s=120) == []  # heartbeat is fresh
    assert orch.recover_stale(session, own_host="gpu0@host")  # restarted under the same name
    session.expire_all()
    st = session.get(Stage, train.id)
    assert st.status == StageStatus.QUEUED and st.celery_task_id != old_token and st.attempts == 1
    assert recorder.messages[-1] == ("stage", train.id, "gpu", st.celery_task_id)
    assert claim_stage(session, train.id, old_token, "w", 3) is None  # the old message is dropped

    # heartbeat silence on another host
    assert claim_stage(session, train.id, st.celery_task_id, "gpu1@host", 3) is not None
    session.execute(update(Stage).where(Stage.id == train.id).values(updated_at=utcnow() - timedelta(hours=1)))
    session.commit()
    assert [s.id for s in orch.recover_stale(session, stale_after_s=120)] == [train.id]


def test_recovery_leaves_an_extract_stage_alone_while_its_fan_out_sets_up(session: Session, dataset: Path,
                                                                           recorder) -> None:
    """Claimed, items not inserted yet (another worker's sweep runs in between): not "0/0 → failed"."""
    p = _submit(session, dataset)
    extract = _by_kind(session, p.id)["extract"]
    assert claim_stage(session, extract.id, extract.celery_task_id, "cpu@a", 3) is not None
    assert orch.recover_stale(session, own_host="cpu@b", stale_after_s=120) == []
    session.expire_all()
    st = session.get(Stage, extract.id)
    assert st.status == StageStatus.RUNNING and st.error_summary is None


def test_claim_gives_up_after_max_attempts(session: Session, dataset: Path, recorder) -> None:
    p = _submit(session, dataset)
    extract = _by_kind(session, p.id)["extract"]
    for _ in range(2):
        session.expire_all()
        token = session.get(Stage, extract.id).celery_task_id
        assert claim_stage(session, extract.id, token, "w@h", max_attempts=2) is not None
        orch.recover_stale(session, own_host="w@h")
    session.expire_all()
    token = session.get(Stage, extract.id).celery_task_id
    assert claim_stage(session, extract.id, token, "w@h", max_attempts=2) is None
    session.expire_all()
    st = session.get(Stage, extract.id)
    assert st.status == StageStatus.FAILED and "gave up after 2 attempts" in st.error_summary
    assert session.get(Pipeline, p.id).status == "failed"


def test_lost_message_is_sent_again(session: Session, dataset: Path, recorder) -> None:
    p = _submit(session, dataset)
    extract = _by_kind(session, p.id)["extract"]
    session.execute(update(Stage).where(Stage.id == extract.id).values(queued_at=utcnow() - timedelta(minutes=5)))
    session.commit()
    n = len(recorder.messages)
    orch.recover_stale(session, lost_after_s=60, message_exists=lambda q, t: True)
    assert len(recorder.messages) == n
    orch.recover_stale(session, lost_after_s=60, message_exists=lambda q, t: False)
    assert recorder.messages[-1] == ("stage", extract.id, "cpu", extract.celery_task_id)


@pytest.mark.postgres
def test_concurrent_advance_never_enqueues_twice(home: Path, pg_url: str, dataset: Path, recorder) -> None:
    upgrade(pg_url)
    factory = session_factory(pg_url)
    with factory() as s:
        pid = _submit(s, dataset).id
        extract = _by_kind(s, pid)["extract"]
        s.execute(update(Stage).where(Stage.id == extract.id).values(status=StageStatus.SUCCEEDED))
        s.commit()
    results: list[list[str]] = []
    barrier = threading.Barrier(4)

    def go() -> None:
        with factory() as s:
            barrier.wait()
            results.append([st.kind for st in orch.advance(s, pid)])

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    enqueued = [k for r in results for k in r]
    assert sorted(enqueued) == ["train_s_coarse", "train_sa_coarse", "train_st_coarse"]
    assert len([m for m in recorder.messages if m[2] == "gpu"]) == 3
