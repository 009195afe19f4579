"""Annotation rows that would make a stage hang or crash are reported and skipped (issue #14)."""

from __future__ import annotations

from pathlib import Path

from sta_models.ave import MAX_EVENT_END_S, read_annotations


def test_absurd_times_are_reported_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "Annotations.txt"
    path.write_text(
        "Category&VideoID&Quality&StartTime&EndTime\n"
        "Bark&aaa&good&0&100000000000000000000\n"  # 1e20: the crops stage looped over it for ever
        f"Bark&bbb&good&0&{MAX_EVENT_END_S + 1}\n"
        "Bark&ccc&good&0&\u00b2\n"  # "²".isdigit() is True, int("²") raises
        "Bark&ddd&good&\u0663&5\n"  # Arabic-Indic digit three
        f"Bark&eee&good&0&{MAX_EVENT_END_S}\n"
        "Bark&fff&good&2&10\n", encoding="utf-8")
    rows, problems = read_annotations(path)
    assert [(r.video_id, r.start, r.end) for r in rows] == [("eee", 0, MAX_EVENT_END_S), ("fff", 2, 10)]
    reasons = {p.line: p.reason for p in problems}
    assert set(reasons) == {2, 3, 4, 5}
    assert "beyond the 3600 s maximum, skipped" in reasons[2] and "beyond" in reasons[3]
    assert "malformed times" in reasons[4] and "malformed times" in reasons[5]
