"""The metric table: one entry per metric, read by the scorer, the result file, the demo table
and the dashboard; one more entry is written by a real evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sta_models import evaluation as E
from sta_models import evaluation_result as R
from sta_models import metric_table as T
from sta_models import metrics as M
from sta_models.config import EvaluateConfig
from sta_models.imageio_utils import read_fixations, read_map

ROOT = Path(__file__).resolve().parents[2]


def test_every_reader_uses_the_table() -> None:
    from dashboard import compare
    from worker import report

    assert T.NAMES == ("cc", "nss", "sim", "kld", "auc_j", "auc_b", "sauc")
    assert E.METRICS == R.METRICS == M.ALL_METRICS == compare.HEADLINE_METRICS == T.NAMES
    assert R.METRIC_LABELS == compare.METRIC_LABELS == T.LABELS and T.LABELS["sauc"] == "s-AUC"
    assert R.LOWER_IS_BETTER == E.LOWER_IS_BETTER == compare.LOWER_IS_BETTER == {"kld"}
    assert [k for k, _ in report.COLUMNS] == ["cc", "nss", "sim", "kld", "auc_j", "sauc"]
    for metric in T.METRICS.values():
        assert callable(getattr(M, metric.function)), metric.name


def test_score_frame_calls_each_function_as_its_entry_says() -> None:
    """The generic call equals the explicit calls, the random metrics drawing in table order."""
    g = np.random.default_rng(3)
    gt, fix, other = g.random((20, 24)), g.random((20, 24)) > 0.9, g.random((20, 24)) > 0.8
    other &= ~fix
    s = E.postprocess_prediction(g.random((20, 24)))
    cfg = EvaluateConfig(n_splits=7, step=0.05)
    got = E.score_frame(s, gt, fix, other, cfg, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    want = {"cc": M.cc(s, gt), "nss": M.nss(s, fix), "sim": M.sim(s, gt), "kld": M.kld(s, gt),
            "auc_j": M.auc_judd(s, fix, jitter=True, rng=rng),
            "auc_b": M.auc_borji(s, fix, n_splits=7, step=0.05, rng=rng),
            "sauc": M.sauc(s, fix, other, n_splits=7, step=0.05, rng=rng)}
    assert got == want
    with pytest.raises(ValueError, match="sauc needs the other frames' fixations"):
        E.score_metric(T.METRICS["sauc"], s, gt, fix)


def test_one_more_entry_is_written_by_an_evaluation(tmp_path: Path) -> None:
    """Registered before anything else imports the table, as an entry in sta_models/metric_table.py is."""
    code = f"""
import json
import numpy as np
from sta_models import metric_table as T
T.register_metric(T.Metric("peak", "Peak", lambda s, fix: float(s[fix > 0].max()), "fixations",
                           lower_is_better=True))
from pathlib import Path
from sta_models import evaluation as E
from sta_models.evaluation_result import METRIC_LABELS, load_evaluation
from dashboard.compare import HEADLINE_METRICS
from worker.report import COLUMNS
from tests.evaluation.test_evaluation import _perfect, _write_gt
root = Path({str(tmp_path)!r})
_write_gt(root / "gt", "vidA", [(6, 8), (8, 10)])
_perfect(root / "gt", root / "pred")
report = E.evaluate_folder(root / "pred", root / "gt", name="sta")
E.write_reports([report], json_path=root / "metrics.json", csv_path=root / "metrics.csv")
result = load_evaluation(root / "metrics.json")
print(json.dumps({{"metrics": result.metrics, "values": result.dataset[0].values, "label": METRIC_LABELS["peak"],
                  "headline": list(HEADLINE_METRICS), "columns": [k for k, _ in COLUMNS],
                  "csv": (root / "metrics.csv").read_text().splitlines()[0],
                  "footer": E.format_table([report]).splitlines()[-1]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["metrics"][-1] == "peak" and got["metrics"][:-1] == list(T.NAMES)
    peaks = []  # the same metric by hand: post-processed map's maximum over the fixated pixels, mean over frames
    for n, (_, fix_path) in E.list_ground_truth(tmp_path / "gt")["vidA"].items():
        s = E.postprocess_prediction(read_map(tmp_path / "pred" / "vidA" / f"{n:05d}.png"))
        peaks.append(float(s[read_fixations(fix_path) > 0].max()))
    assert got["values"]["peak"] == pytest.approx(np.mean(peaks), abs=1e-6) and 0 < np.mean(peaks) < 1
    assert got["label"] == "Peak" and got["headline"][-1] == "peak" and got["columns"][-1] == "peak"
    assert got["csv"].endswith(",sauc,peak")
    assert got["footer"] == "(kld, peak: lower is better; all others: higher is better)"
