"""The evaluation table printed at the end of ``stapipe demo`` (from the evaluate stage's summary)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from db.models import Stage
from db.session import session_scope
from sta_models.metric_table import METRICS, direction_note

COLUMNS = tuple((m.name, m.label) for m in METRICS.values() if m.in_demo_table)


def evaluation_table(url: str, pipeline_id: int) -> str:
    with session_scope(url) as s:
        stage = s.scalars(select(Stage).where(Stage.pipeline_id == pipeline_id, Stage.kind == "evaluate")).one_or_none()
        summary = dict(stage.summary or {}) if stage is not None else {}
        status = stage.status if stage is not None else "missing"
        out_dir = stage.output_dir if stage is not None else None
    metrics = summary.get("metrics")
    if not metrics:
        return f"no evaluation results (evaluate stage {status})"
    head = f"{'method':<14}" + "".join(f"{label:>8}" for _, label in COLUMNS)
    lines = [head, "-" * len(head)]
    for name, label in (("sta", "STA"), ("centre", "centre bias")):
        row = metrics.get(name) or {}
        lines.append(f"{label:<14}" + "".join(
            f"{row[k]:>8.3f}" if isinstance(row.get(k), int | float) else f"{'-':>8}" for k, _ in COLUMNS))
    lines.append(f"({direction_note([k for k, _ in COLUMNS])})")
    ablation = _ablation_table(out_dir)
    return "\n".join(lines) + (f"\n\n{ablation}" if ablation else "")


def _ablation_table(out_dir: str | None) -> str | None:
    """The ablation table of the evaluate stage's ``metrics.json`` (datasets with true saliency)."""
    if not out_dir:
        return None
    from sta_models.evaluation_result import EvaluationFileError, load_evaluation

    try:
        ablation = load_evaluation(Path(out_dir) / "metrics.json").ablation
    except EvaluationFileError:
        return None
    if ablation is None:
        return None
    from sta_models.ablation import format_ablation

    return format_ablation(ablation)
