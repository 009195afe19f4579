"""The optional benchmark stage: the pipeline's trained STA on the STAViS test sets
(``Settings.stavis_dir``), the paper's table written to the stage's folder (``benchmark.json``)."""

from __future__ import annotations

from typing import Any

from worker.stage_context import StageContext


def benchmark_stage(ctx: StageContext) -> dict[str, Any]:
    from sta_models.benchmark import run_benchmark
    from stapipe_settings import get_settings

    root = get_settings().stavis_dir
    if not (root / "video_frames").is_dir():
        raise RuntimeError(f"no STAViS test sets at {root} (video_frames/, annotations/, fold_lists/); "
                           "set STAPIPE_STAVIS_ROOT")
    checkpoint = ctx.inputs["train_sta"] / "best.pt"
    # per-frame PNGs (hundreds of thousands on the real sets) stay beside the stage's folder, not
    # in it: the stage's artefact records stay the table, the metrics and the log
    table = run_benchmark(checkpoint, root, ctx.output_dir, device=ctx.config.sta.device, cfg=ctx.config.evaluate,
                          pred_root=ctx.output_dir.parent / "benchmark_predictions", callbacks=ctx.callbacks)
    ctx.callbacks.log("benchmark:\n" + table.text())
    return {"sets": table.sets, "runs": table.runs,
            "sta": {s: table.rows[0].values.get(s) for s in table.sets}}
