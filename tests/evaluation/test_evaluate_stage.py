"""The worker's evaluate stage body on a real pipeline's upstream outputs (tests/real_evaluation.py):
prediction, scoring, strips, the ablation and metrics.json, as a worker runs it, without Celery
or a database (those are covered by the end-to-end tests)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from sta_models import evaluation_result as R
from sta_models.ave import load_dataset
from sta_models.callbacks import Callbacks
from sta_models.config import preset
from tests.real_evaluation import RealEvaluation


@pytest.mark.slow  # the real_evaluation fixture trains and runs STA (~1 min)
def test_evaluate_stage_writes_the_result_with_ablation(real_evaluation: RealEvaluation, synth_features: Path,
                                                        tmp_path: Path) -> None:
    from worker.evaluate import evaluate_stage

    cfg = preset("tiny")
    cfg.sta.device = "cpu"
    cfg.evaluate.n_splits = 10
    out = tmp_path / "evaluate"
    out.mkdir()
    lines: list[str] = []
    dirs = {k: real_evaluation.root / k for k in ("cams_coarse", "crops", "cams_fine", "pseudo_gt", "train_sta")}
    ctx = SimpleNamespace(config=cfg, inputs={"extract": synth_features, **dirs}, dataset_root=real_evaluation.dataset_root,
                          output_dir=out, callbacks=Callbacks(message=lines.append))
    summary = evaluate_stage(ctx, load_dataset(real_evaluation.dataset_root))  # type: ignore[arg-type]
    result = R.load_evaluation(out / "metrics.json")
    assert summary["predicted"] == summary["test_videos"] > 0 and not summary["prediction_failures"]
    assert summary["metrics"]["sta"]["cc"] == pytest.approx(result.method("sta").values["cc"], abs=1e-6)
    assert result.ablation is not None and summary["ablation_frames"] == result.ablation.rows[0].frames_scored
    assert len(result.strips) == summary["test_videos"] and all((out / s.file).is_file() for s in result.strips)
    log = "\n".join(lines)
    assert "evaluation:\n" in log and "ablation against the true saliency:\n" in log and "CAM SA (fine)" in log

    # a pipeline whose pseudo-GT stage wrote nothing for the test videos: no ablation, said in the log
    empty = tmp_path / "empty_pgt"
    empty.mkdir()
    ctx.inputs["pseudo_gt"] = empty
    shutil.rmtree(out)
    out.mkdir()
    lines.clear()
    evaluate_stage(ctx, load_dataset(real_evaluation.dataset_root))  # type: ignore[arg-type]
    assert R.load_evaluation(out / "metrics.json").ablation is None
    assert any("no ablation table" in line for line in lines)
