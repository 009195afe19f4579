"""The synthetic datasets' own ground truth, scored as predictions, must beat the centre baseline."""

from __future__ import annotations

from pathlib import Path

from sta_models import evaluation as E
from sta_models.config import EvaluateConfig


def test_synthetic_gt_as_prediction_beats_centre_bias(synth_root: Path) -> None:
    gt = synth_root / "annotations"
    cfg = EvaluateConfig(n_splits=10)
    # the GT folder itself is a valid prediction folder (<video>/maps/eyeMap_N.jpg)
    rep = E.evaluate_folder(gt, gt, cfg=cfg)
    base = E.evaluate_baseline(gt, "centre", cfg=cfg)
    assert len(rep.videos) == 12 and rep.frames == 12 * 4 and rep.missing_frames == 0
    d, b = rep.dataset, base.dataset
    assert d["cc"] > 0.95 and d["sim"] > 0.8 and d["nss"] > 2.0 and d["auc_j"] > 0.9
    assert d["cc"] > b["cc"] + 0.3 and d["nss"] > b["nss"] + 1.0 and d["kld"] < b["kld"]
