"""The evaluate stage: STA predictions on the test split, scored with the STAViS protocol against
the dataset's ground truth (``<dataset>/annotations``) next to a centre-bias baseline."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from worker.stage_context import StageContext


def _inputs(folder: Path, feature_dir: Path, video_ids: list[str]) -> Path:
    """A folder of links to the test videos' feature files: predict reads them, no re-extraction."""
    folder.mkdir(parents=True, exist_ok=True)
    for vid in video_ids:
        src = feature_dir / f"{vid}.h5"
        if src.is_file():
            (folder / src.name).symlink_to(src)
    return folder


def evaluate_stage(ctx: StageContext, dataset: Any) -> dict[str, Any]:
    from sta_models.ablation import AblationInputs, format_ablation, recorded_weighting
    from sta_models.evaluation import format_table
    from sta_models.evaluation_stage import score_predictions
    from sta_models.predict import predict_videos

    cfg = ctx.config.evaluate
    feature_dir = ctx.inputs["extract"]
    test_ids = sorted({r.video_id for r in dataset.test if (feature_dir / f"{r.video_id}.h5").is_file()})
    if not test_ids:
        raise RuntimeError("no test video has a feature file; nothing to evaluate")
    checkpoint = ctx.inputs["train_sta"] / "best.pt"
    pred_dir = ctx.output_dir / "predictions"
    tmp = Path(tempfile.mkdtemp(prefix="stapipe-eval-"))
    try:
        with_overlay, rest = test_ids[: cfg.overlay_videos], test_ids[cfg.overlay_videos:]
        results = []
        for ids, overlay, name in ((with_overlay, True, "a"), (rest, False, "b")):
            if ids:
                results += predict_videos(checkpoint, _inputs(tmp / name, feature_dir, ids), pred_dir,
                                          device=ctx.config.sta.device, overlay=overlay, callbacks=ctx.callbacks)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    failed = {r.video_id: r.error for r in results if not r.ok}
    for vid, err in failed.items():
        ctx.callbacks.log(f"prediction failed for {vid}: {err}")
    summary: dict[str, Any] = {"test_videos": len(test_ids), "predicted": len(results) - len(failed),
                               "prediction_failures": failed}
    gt_dir = ctx.dataset_root / "annotations"
    if not gt_dir.is_dir():
        ctx.callbacks.log(f"no ground truth at {gt_dir}: predictions only")
        summary["metrics"] = None
        return summary
    inputs = AblationInputs(cams_coarse=ctx.inputs["cams_coarse"], crops=ctx.inputs["crops"],
                            cams_fine=ctx.inputs["cams_fine"], pseudo_gt=ctx.inputs["pseudo_gt"], predictions=pred_dir,
                            weighting_coarse=recorded_weighting(ctx.inputs["crops"] / "crops.json"),
                            weighting_fine=recorded_weighting(ctx.inputs["pseudo_gt"] / "report.json"))
    scored = score_predictions(pred_dir, gt_dir, ctx.output_dir, feature_dir=feature_dir, test_rows=dataset.test,
                               ablation_inputs=inputs, videos=test_ids, cfg=cfg, callbacks=ctx.callbacks)
    sta, centre, ablation = scored.sta, scored.centre, scored.result.ablation
    ctx.callbacks.log("evaluation:\n" + format_table([sta, centre], per_video=False))
    if ablation is not None:
        ctx.callbacks.log("ablation against the true saliency:\n" + format_ablation(ablation))
    for line in sta.problems():
        ctx.callbacks.log(f"sta: {line}")
    summary["metrics"] = {"sta": sta.to_dict()["dataset"], "centre": centre.to_dict()["dataset"]}
    summary["frames"] = sta.frames
    summary["ablation_frames"] = ablation.rows[0].frames_scored + ablation.rows[0].frames_missing if ablation else None
    return summary
