"""``stapipe demo``'s final output: the evaluation table from the stage summary, then the ablation
read from the real evaluate output's metrics.json."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from db.models import Pipeline, Stage
from db.session import make_engine
from tests.real_evaluation import RealEvaluation


@pytest.mark.slow  # the real_evaluation fixture trains and runs STA (~1 min)
def test_demo_table_shows_the_ablation(real_evaluation: RealEvaluation, tmp_path: Path) -> None:
    from db.migrate import upgrade
    from worker.report import evaluation_table

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    upgrade(url)
    engine = make_engine(url)
    sta, centre = real_evaluation.scored.sta, real_evaluation.scored.centre
    with Session(engine) as s:
        p = Pipeline(name="demo", dataset_root=str(real_evaluation.dataset_root), config={}, status="succeeded")
        s.add(p)
        s.flush()
        s.add(Stage(pipeline_id=p.id, kind="evaluate", position=12, status="succeeded", queue="gpu",
                    depends_on=[], output_dir=str(real_evaluation.evaluate_dir),
                    summary={"metrics": {"sta": sta.to_dict()["dataset"], "centre": centre.to_dict()["dataset"]}}))
        s.commit()
        pid = p.id
    engine.dispose()
    text = evaluation_table(url, pid)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["method", "CC", "NSS"]
    assert any(line.startswith("STA") and f"{sta.dataset['cc']:.3f}" in line for line in lines)
    assert any(line.startswith("centre bias") for line in lines)
    ablation = text[text.index("ablation"):]
    for label in ("CAM S (coarse)", "CAM SA (coarse)", "CAM ST (coarse)", "fusion (coarse)", "CAM S (fine)",
                  "CAM SA (fine)", "CAM ST (fine)", "fusion (fine)", "pseudo-GT", "STA", "centre bias"):
        assert f"\n{label}" in ablation, label
    print(text)
