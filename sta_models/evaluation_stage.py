"""Everything the evaluate stage does after prediction, as one function the worker and tests share.

STA's predictions and the centre-bias baseline scored on the test videos, a strip per video, the
ablation when the pipeline's intermediate outputs are given, and ``metrics.json`` +
``metrics.csv`` written in the versioned schema (:mod:`sta_models.evaluation_result`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sta_models import evaluation_result as R
from sta_models.ablation import AblationInputs, run_ablation
from sta_models.callbacks import NO_CALLBACKS, Callbacks
from sta_models.config import EvaluateConfig
from sta_models.evaluation import (
    EvaluationReport,
    build_result,
    evaluate_baseline,
    evaluate_folder,
    list_ground_truth,
    list_predictions,
    write_reports,
)
from sta_models.pseudogt import RowLike
from sta_models.strips import write_strips


@dataclass
class Scored:
    sta: EvaluationReport
    centre: EvaluationReport
    result: R.EvaluationResult


def score_predictions(
    pred_dir: Path,
    gt_dir: Path,
    out_dir: Path,
    *,
    feature_dir: Path | None = None,
    test_rows: Sequence[RowLike] = (),
    ablation_inputs: AblationInputs | None = None,
    videos: Sequence[str] = (),
    cfg: EvaluateConfig | None = None,
    callbacks: Callbacks = NO_CALLBACKS,
) -> Scored:
    """Score ``pred_dir`` against ``gt_dir`` and write ``out_dir/metrics.json``, ``metrics.csv``
    and ``out_dir/strips/`` (with ``feature_dir``). ``videos``: the baseline's videos when STA
    scored none. The ablation runs on ``test_rows`` when ``ablation_inputs`` is given."""
    cfg = cfg or EvaluateConfig()
    sta = evaluate_folder(pred_dir, gt_dir, cfg=cfg, callbacks=callbacks, name="sta")
    scored = [v.video for v in sta.videos]
    centre = evaluate_baseline(gt_dir, "centre", videos=scored or list(videos), cfg=cfg, callbacks=callbacks)
    strips = (write_strips(scored, feature_dir, list_ground_truth(gt_dir), list_predictions(pred_dir), out_dir)
              if feature_dir is not None else [])
    ablation = None
    if ablation_inputs is not None:
        ablation = run_ablation(test_rows, gt_dir, ablation_inputs, cfg=cfg, callbacks=callbacks)
        if ablation is None:
            callbacks.log("ablation: no test video has a pseudo-GT frame with ground truth; no ablation table")
    write_reports([sta, centre], json_path=Path(out_dir) / "metrics.json", csv_path=Path(out_dir) / "metrics.csv",
                  config=cfg, ablation=ablation, strips=strips)
    return Scored(sta, centre, build_result([sta, centre], cfg, ablation, strips))
