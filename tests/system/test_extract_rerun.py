"""A failed extraction, re-run: the failed videos and the changed ones are extracted again, the
unchanged ones reused (issue #14, item 3). Real worker process (cpu queue only, so the stage's
dependants stay queued), SQLite + filesystem broker, ffmpeg-made videos."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import pytest
from sqlalchemy import select

from db.migrate import upgrade
from db.models import ExtractionItem, Stage
from db.session import session_scope
from sta_models.config import preset
from sta_models.filehash import sha256_file
from worker import orchestration as orch

from .conftest import stack_env, wait_until

pytestmark = pytest.mark.slow


def test_failed_extraction_rerun_retries_failed_and_changed(
        home: Path, sqlite_url: str, synth_root: Path, tmp_path: Path, worker_procs_factory) -> None:  # noqa: ANN001
    root = tmp_path / "ds"
    shutil.copytree(synth_root, root)
    videos = sorted((root / "AVE").glob("*.mp4"))
    broken = videos[:2]
    good_copy = {v: tmp_path / v.name for v in broken}
    for v in broken:  # two truncated files: 10/12 < min_success_fraction 0.9 → the stage fails
        shutil.copy(v, good_copy[v])
        v.write_bytes(v.read_bytes()[:200])
    changed, unchanged = videos[2], videos[3]

    upgrade(sqlite_url)
    with session_scope(sqlite_url) as s:
        pid = orch.submit_pipeline(s, name="x", dataset_root=root, config=preset("tiny").model_dump(mode="json"),
                                   submitted_by="test").id
    workers = worker_procs_factory(stack_env(home, sqlite_url, None, STAPIPE_RECOVERY_INTERVAL_S="2",
                                             STAPIPE_DATA_ROOT=str(tmp_path)))
    workers.start("w1", queues="cpu", concurrency=2)

    def extract() -> Stage:
        with session_scope(sqlite_url) as s:
            return s.scalars(select(Stage).where(Stage.pipeline_id == pid, Stage.kind == "extract")).one()

    def items() -> dict[str, ExtractionItem]:
        with session_scope(sqlite_url) as s:
            st = extract()
            return {i.video_id: i for i in s.scalars(select(ExtractionItem).where(ExtractionItem.stage_id == st.id))}

    wait_until(lambda: extract().status in ("succeeded", "failed"), 240, 0.5, "the first extraction")
    st = extract()
    assert st.status == "failed" and st.error_summary == "only 10/12 videos extracted (needs 90%)", st.error_summary
    first = items()
    assert {v for v, i in first.items() if i.status == "failed"} == {v.stem for v in broken}
    for v in broken:  # reasons name the video relative to the data root, never the server's layout
        reason = first[v.stem].reason
        assert f"ds/AVE/{v.name}" in reason and str(tmp_path) not in reason, reason
    out_dir = Path(st.output_dir)
    mtimes = {v: (out_dir / f"{v}.h5").stat().st_mtime_ns for v in first if first[v].status == "succeeded"}

    for v in broken:  # "replace the file, re-run" (docs/deployment.md)
        shutil.copy(good_copy[v], v)
    staged = changed.with_suffix(".new")
    shutil.copy(unchanged, staged)  # other bytes under the same name, moved into place
    os.replace(staged, changed)

    with session_scope(sqlite_url) as s:
        orch.rerun_stage(s, st.id)
    wait_until(lambda: extract().status in ("succeeded", "failed"), 240, 0.5, "the re-run")
    st = extract()
    assert st.status == "succeeded", st.error_summary
    assert st.summary["extracted"] == 12 and st.summary["failed"] == 0
    second = items()
    assert all(i.status == "succeeded" for i in second.values())
    for v in broken:
        assert second[v.stem].attempts == 2
    with h5py.File(out_dir / f"{changed.stem}.h5", "r") as f:  # re-extracted from the new bytes
        assert f.attrs["source_sha256"] == sha256_file(changed)
    assert second[changed.stem].attempts == 2
    # unchanged videos: not queued again, their feature files untouched
    untouched = [v for v in mtimes if v != changed.stem]
    assert all(second[v].attempts == 1 for v in untouched)
    assert all((out_dir / f"{v}.h5").stat().st_mtime_ns == mtimes[v] for v in untouched)
    log = Path(st.log_path).read_text()
    assert "fan-out: 12 videos (3 to do, 3 of them failed before or changed since)" in log
