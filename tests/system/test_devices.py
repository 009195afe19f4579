"""Device names are checked on the worker that runs the stage (issue #14): one clear line."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from db.migrate import upgrade
from db.models import Stage
from db.session import session_scope
from sta_models.config import preset
from worker import orchestration as orch
from worker.devices import stage_devices
from worker.stage_graph import Queue, StageSpec
from worker.stage_runner import execute_stage
from worker.tasks import _before


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def test_stage_devices_per_kind() -> None:
    cfg = preset("tiny")
    cfg.coarse["sa"].device = "cuda:1"
    cfg.fine["st"].device = "cpu"
    cfg.sta.device = "cuda"
    assert stage_devices("train_sa_coarse", cfg) == ["cuda:1"]
    assert stage_devices("cams_fine", cfg) == ["auto", "auto", "cpu"]
    assert stage_devices("train_sta", cfg) == stage_devices("evaluate", cfg) == ["cuda"]
    assert stage_devices("extract", cfg) == stage_devices("crops", cfg) == []


def test_missing_gpu_fails_the_stage_with_one_line(home: Path, sqlite_url: str, tmp_path: Path, dispatched) -> None:  # noqa: ANN001
    upgrade(sqlite_url)
    root = tmp_path / "ds"
    (root / "AVE").mkdir(parents=True)
    (root / "Annotations.txt").write_text("Category&VideoID&Quality&StartTime&EndTime\n")
    cfg = preset("tiny").model_dump(mode="json")
    missing = f"cuda:{_gpus()}"  # one past the last GPU of this machine (cuda:0 on a CPU-only one)
    cfg["coarse"]["s"]["device"] = missing
    with session_scope(sqlite_url) as s:
        pid = orch.submit_pipeline(s, name="dev", dataset_root=root, config=cfg, submitted_by="t").id
        st = s.scalars(select(Stage).where(Stage.pipeline_id == pid, Stage.kind == "train_s_coarse")).one()
        st.status, st.celery_task_id = "queued", "tok"
        sid = st.id
    ran: list[int] = []
    spec = StageSpec("train_s_coarse", Queue.GPU, body=lambda ctx: ran.append(1))
    outcome = execute_stage(sqlite_url, sid, "tok", "w1@host", 3, spec, before=_before)
    assert outcome == "failed" and ran == []
    with session_scope(sqlite_url) as s:
        err = s.get(Stage, sid).error_summary
    assert err.startswith(f"DeviceUnavailable: stage train_s_coarse on w1@host: device '{missing}' requested")
    assert ("no CUDA GPU" in err) if _gpus() == 0 else (f"has {_gpus()} GPU(s)" in err)
    assert "\n" not in err
