"""The embedded default end to end: SQLite + kombu's filesystem broker, no server at all.

Runs the README's main command, `stapipe demo`, at the `tiny` preset (unchanged) on a tiny dataset:
it generates the synthetic data, starts worker + dashboard (gunicorn), submits, follows, prints the
evaluation table and stops what it started. It is also the end-to-end quality check: the STA model
trained on pseudo ground truth must beat the centre-bias baseline on CC and NSS.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sta_models.config import preset
from sta_models.evaluation_result import load_evaluation

from .conftest import ROOT, stack_env

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_on_embedded_default(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # OMP_NUM_THREADS=2 (stack_env's is 1): each pool child's torch starts with 2 threads, to share
    env = stack_env(home, None, None, STAPIPE_DASHBOARD_PORT=str(_free_port()), STAPIPE_RECOVERY_INTERVAL_S="5",
                    OMP_NUM_THREADS="2")
    cmd = [sys.executable, "-m", "worker.cli", "demo", "--preset", "tiny", "--classes", "3",
           "--videos-per-class", "4", "--seconds", "4", "--workers", "1", "--concurrency", "2", "--exit"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            import os
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    assert "dashboard: http://127.0.0.1:" in text and "login token:" in text
    assert "pipeline 1: succeeded" in text
    assert "No hostname was supplied" not in text  # kombu's warning on a bare filesystem:// URL
    table = text[text.index("method"):]
    assert "STA" in table and "centre bias" in table and "s-AUC" in table

    db = sqlite3.connect(home / "stapipe.db")
    states = dict(db.execute("select kind, status from stages"))
    assert len(states) == 13 and set(states.values()) == {"succeeded"}, states
    assert db.execute("select count(*) from extraction_items where status='succeeded'").fetchone()[0] == 12
    cfg = preset("tiny")
    epochs = sum(c.epochs for c in (*cfg.coarse.values(), *cfg.fine.values())) + cfg.sta.epochs
    assert db.execute("select count(*) from epoch_metrics").fetchone()[0] == epochs
    # the busy pool children share torch's threads (worker.cpu_threads): SA coarse runs beside S and
    # ST on half of them (from its start, or from a batch after a "CPU threads:" line), STA alone on all
    budget, half = 2, 1
    sa_log = next((home / "logs").rglob("train_sa_coarse.log")).read_text()
    assert f"training on cpu with {half} CPU thread(s)" in sa_log or f"CPU threads: {half} of {budget} (" in sa_log, sa_log
    sta_log = next((home / "logs").rglob("train_sta.log")).read_text()
    assert f"training on cpu with {budget} CPU thread(s)" in sta_log, sta_log[-2000:]

    (metrics_path,) = db.execute(
        "select a.path from artefacts a join stages s on s.id = a.stage_id "
        "where s.kind = 'evaluate' and a.path like '%metrics.json'").fetchone()
    result = load_evaluation(metrics_path)
    sta, centre = result.method("sta").values, result.method("centre").values
    assert result.method("sta").frames_scored > 0
    assert result.ablation is not None and "pseudo-GT" in text and "CAM SA (fine)" in text  # synthetic: true saliency
    assert sta["cc"] > centre["cc"] + 0.05, (sta, centre)
    assert sta["nss"] > centre["nss"], (sta, centre)
    assert (home / "broker" / "queue").is_dir() and not list((home / "broker" / "queue").iterdir())
    # everything it started is gone (its process group would still hold members otherwise)
    assert subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).stdout == b""
