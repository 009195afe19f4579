"""The evaluate stage's result: the schema written by the real evaluation, read back by the one loader."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sta_models import evaluation_result as R
from sta_models.ablation import format_ablation, methods
from sta_models.evaluation import METRICS
from tests.real_evaluation import RealEvaluation


def test_metric_names_match_the_metrics_module() -> None:
    assert tuple(R.METRICS) == tuple(METRICS)


@pytest.mark.slow  # the real_evaluation fixture trains and runs STA (~1 min)
def test_the_real_output_reads_back_as_what_was_scored(real_evaluation: RealEvaluation) -> None:
    path = real_evaluation.evaluate_dir / "metrics.json"
    result = R.load_evaluation(path)
    sta, centre = real_evaluation.scored.sta, real_evaluation.scored.centre
    assert result.schema_version == R.SCHEMA_VERSION and result.protocol == "stavis"
    assert [(m.method, m.label) for m in result.dataset] == [("sta", "STA"), ("centre", "centre bias")]
    for report, row in ((sta, result.method("sta")), (centre, result.method("centre"))):
        assert row is not None
        assert row.frames_scored == report.frames > 0
        assert row.frames_missing == report.missing_frames and row.frames_nan == report.nan_frames
        for m in METRICS:
            assert row.values[m] == pytest.approx(report.dataset[m], abs=1e-6)
    assert {v.video for v in result.videos_of("sta")} == {v.video for v in sta.videos}
    assert sum(v.frames_scored for v in result.videos_of("sta")) == sta.frames
    # strict JSON (no NaN) and the file is what to_json() gives
    assert json.loads(path.read_text()) == result.to_json()


@pytest.mark.slow  # the real_evaluation fixture trains and runs STA (~1 min)
def test_strips_and_overlays_exist_for_the_scored_videos(real_evaluation: RealEvaluation) -> None:
    import cv2

    result = R.load_evaluation(real_evaluation.evaluate_dir / "metrics.json")
    assert {s.video for s in result.strips} == {v.video for v in result.videos_of("sta")}
    for s in result.strips:
        img = cv2.imread(str(real_evaluation.evaluate_dir / s.file))
        assert img.shape == (len(s.seconds) * s.panel_height, len(s.panels) * s.panel_width, 3)
    assert list((real_evaluation.evaluate_dir / "predictions").glob("*_overlay.mp4"))


@pytest.mark.slow  # the real_evaluation fixture trains and runs STA (~1 min)
def test_ablation_scores_every_intermediate_output_on_one_frame_set(real_evaluation: RealEvaluation) -> None:
    ablation = R.load_evaluation(real_evaluation.evaluate_dir / "metrics.json").ablation
    assert ablation is not None and ablation.metrics == ["cc", "nss", "sim"]
    rows = {r.method: r for r in ablation.rows}
    assert list(rows) == [m for m, _, _ in methods()]
    n = rows["pseudo_gt"].frames_scored
    assert n > 0 and all(r.frames_scored + r.frames_missing == n for r in ablation.rows)
    cc = {m: r.values["cc"] for m, r in rows.items()}
    # the oracle CAMs' known order: S (the truth) > SA (blurred) > ST (displaced)
    assert cc["cam_s_coarse"] > 0.95 and cc["cam_s_coarse"] > cc["cam_sa_coarse"] > cc["cam_st_coarse"]
    assert cc["cam_s_fine"] > cc["cam_st_fine"]
    # ST mostly does not select: the fusions follow S and SA, and so does the pseudo-GT
    assert cc["fusion_coarse"] > cc["cam_st_coarse"] + 0.5 and cc["fusion_fine"] > cc["cam_st_fine"]
    assert cc["pseudo_gt"] > cc["centre"] + 0.3
    assert all(v is None or math.isfinite(v) for r in ablation.rows for v in r.values.values())
    text = format_ablation(ablation)
    assert "CAM SA (fine)" in text and "pseudo-GT" in text and f"{n} frames" in text


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.slow  # the real_evaluation fixture trains and runs STA (~1 min)
def test_unknown_versions_and_damaged_files_are_refused_in_one_line(real_evaluation: RealEvaluation,
                                                                   tmp_path: Path) -> None:
    good = json.loads((real_evaluation.evaluate_dir / "metrics.json").read_text())
    cases = {
        "schema version 2": {**good, "schema_version": 2},
        "schema version None": {k: v for k, v in good.items() if k != "schema_version"},
        "dataset row 1": {**good, "dataset": [{"label": "STA"}]},
        "unexpected keyword argument 'extra'": {**good, "extra": 1},
        "value of 'cc' is not a number": {**good, "videos": [{**good["videos"][0], "values": {"cc": "high"}}]},
        "is not a JSON object": [1, 2],
    }
    for expected, data in cases.items():
        with pytest.raises(R.EvaluationFileError) as err:
            R.load_evaluation(_write(tmp_path, data))
        assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(R.EvaluationFileError, match="could not be read"):
        R.load_evaluation(tmp_path / "metrics.json")
    with pytest.raises(R.EvaluationFileError, match="does not exist"):
        R.load_evaluation(tmp_path / "nothing.json")


def test_best_methods_respect_lower_is_better() -> None:
    rows = [R.MethodResult("a", "A", {"cc": 0.5, "kld": 1.0}), R.MethodResult("b", "B", {"cc": 0.7, "kld": 1.2}),
            R.MethodResult("c", "C", {"cc": None, "kld": None})]
    assert R.best_methods(rows, "cc") == {"b"} and R.best_methods(rows, "kld") == {"a"}
    assert R.best_methods(rows[2:], "cc") == set()


@pytest.mark.slow  # the real_evaluation fixture trains and runs STA (~1 min)
def test_headline_is_stas_dataset_values(real_evaluation: RealEvaluation, tmp_path: Path) -> None:
    from dashboard.results import headline
    from db.models import Stage

    sta = real_evaluation.scored.sta.dataset
    for where in (real_evaluation.root, real_evaluation.evaluate_dir,
                  Stage(kind="evaluate", status="succeeded", output_dir=str(real_evaluation.evaluate_dir))):
        values = headline(where)
        assert values is not None and values["cc"] == pytest.approx(sta["cc"], abs=1e-6)
        assert set(values) == set(METRICS)
    assert headline(tmp_path) is None
    _write(tmp_path, {"schema_version": 7})
    assert headline(tmp_path) is None


def test_per_video_rows_put_the_worst_sta_first_and_undefined_last() -> None:
    from dashboard.results import per_video_rows

    videos = [R.VideoResult(v, m, {"cc": cc}) for v, m, cc in
              (("a", "sta", 0.7), ("b", "sta", None), ("c", "sta", 0.2), ("a", "centre", 0.3))]
    rows = per_video_rows(R.EvaluationResult(dataset=[], videos=videos))
    assert [r["video"] for r in rows] == ["c", "a", "b"]
    assert rows[1]["values"] == {"sta": {"cc": 0.7}, "centre": {"cc": 0.3}}
