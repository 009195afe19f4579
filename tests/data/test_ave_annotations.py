"""AVE annotation reading and splits (SPEC §1), on the real list and on hand-made edge cases."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sta_models.ave import CATEGORIES, AnnotationRow, load_dataset, read_annotations

REAL = Path(__file__).resolve().parent.parent / "data_files" / "Annotations.txt"


def test_categories_in_spec_order():
    assert len(CATEGORIES) == 28 and len(set(CATEGORIES)) == 28
    assert CATEGORIES[0] == "Church bell" and CATEGORIES[10] == "Frying (food)"
    assert CATEGORIES[19] == "Baby cry, infant cry" and CATEGORIES[27] == "Mandolin"


def test_real_annotation_list_counts():
    rows, problems = read_annotations(REAL)
    assert len(REAL.read_text().splitlines()) == 4143  # data lines, no header
    assert len(rows) == 4142  # one zero-length row skipped
    assert [(p.line, "zero-length" in p.reason) for p in problems] == [(27, True)]
    assert {r.category for r in rows} == set(CATEGORIES)
    per_video = Counter(r.video_id for r in rows)
    assert len(per_video) == 4096  # 4097 ids in the file; VWi2ENBuTbw only had the zero-length row
    assert sum(1 for n in per_video.values() if n > 1) == 45
    assert per_video["0f_iTO5t3hU"] == 3
    assert len({r.key for r in rows}) == 4142  # a row key is unique even where the video id is not
    first = rows[0]
    assert first == AnnotationRow("Church bell", 0, "RUhOCu3LNXM", 0, 10, 1)
    assert first.key == "RUhOCu3LNXM.c00" and list(first.seconds) == list(range(10))
    assert Counter(r.category for r in rows)["Cat"] == 60


def test_edge_cases(tmp_path):
    text = (
        "\ufeffCategory&VideoID&Quality&StartTime&EndTime\r\n"
        "Frying (food)&aaa&good&2&5   \r\n"
        "Race car, auto racing&aaa&good&0&10\r\n"
        "Rodents, rats, mice&bbb&bad&1&4\r\n"
        "Church bell&ccc&good&3&3\r\n"
        "Kazoo&ddd&good&0&10\r\n"
        "Bark&eee&good&x&10\r\n"
        "Bark&fff&good&0\r\n"
        "\r\n"
        "Bark&ggg&good&0&2\r\n"
        "Bark&ggg&good&0&2\r\n"
    )
    path = tmp_path / "Annotations.txt"
    path.write_bytes(text.encode("utf-8"))
    rows, problems = read_annotations(path)
    assert [(r.category_id, r.video_id, r.start, r.end, r.line) for r in rows] == [
        (10, "aaa", 2, 5, 2), (4, "aaa", 0, 10, 3), (25, "bbb", 1, 4, 4), (2, "ggg", 0, 2, 10)]
    reasons = {p.line: p.reason for p in problems}
    assert set(reasons) == {5, 6, 7, 8, 11}
    assert "zero-length" in reasons[5] and "unknown category" in reasons[6]
    assert "malformed" in reasons[7] and "5 '&'-separated" in reasons[8] and "duplicate" in reasons[11]
    assert all(p.path == str(path) for p in problems)


def _layout(root: Path, ids: dict[str, str], with_videos: set[str]) -> None:
    (root / "AVE").mkdir(parents=True)
    lines = [f"{cat}&{vid}&good&0&10\n" for vid, cat in ids.items()]
    (root / "Annotations.txt").write_text("".join(lines))
    for vid in with_videos:
        (root / "AVE" / f"{vid}.mp4").write_bytes(b"x")


def test_seeded_split_is_deterministic_by_video_and_reports_missing(tmp_path):
    ids = {f"v{i:03d}": CATEGORIES[i % 4] for i in range(80)}
    _layout(tmp_path, ids, set(ids) - {"v005"})
    # v010 also carries a second category: both rows must land in the same split.
    with open(tmp_path / "Annotations.txt", "a") as fh:
        fh.write(f"{CATEGORIES[7]}&v010&good&1&3\n")
    a, b = load_dataset(tmp_path, seed=1), load_dataset(tmp_path, seed=1)
    assert [r.key for r in a.train] == [r.key for r in b.train] and len(a.rows) == 80
    # 20 videos per category: 2 val + 2 test each (v005 is dropped, v010 may add a row).
    assert 7 <= len({r.video_id for r in a.val}) <= 8 and 7 <= len({r.video_id for r in a.test}) <= 8
    assert [p.reason for p in a.problems] == ["missing video AVE/v005.mp4"]
    splits = {}
    for row in a.rows:
        splits.setdefault(row.video_id, set()).add(a.split_of(row))
    assert all(len(s) == 1 for s in splits.values())
    for name in ("train", "val", "test"):
        assert {r.category for r in getattr(a, name)} >= set(CATEGORIES[:4])
    assert a.video_path("v001") == tmp_path / "AVE" / "v001.mp4"
    c = load_dataset(tmp_path, seed=2)
    assert {r.key for r in c.val} != {r.key for r in a.val}


def test_split_files_win_and_val_may_be_missing(tmp_path):
    ids = {f"v{i:02d}": CATEGORIES[i % 2] for i in range(30)}
    _layout(tmp_path, ids, set(ids))
    lines = (tmp_path / "Annotations.txt").read_text().splitlines(keepends=True)
    (tmp_path / "trainSet.txt").write_text("".join(lines[:24]))
    (tmp_path / "testSet.txt").write_text("".join(lines[24:]))
    ds = load_dataset(tmp_path)
    assert {r.video_id for r in ds.test} == {f"v{i:02d}" for i in range(24, 30)}
    assert len(ds.train) + len(ds.val) == 24 and len(ds.val) >= 2
    assert not ({r.video_id for r in ds.train} & {r.video_id for r in ds.val})
    (tmp_path / "valSet.txt").write_text("".join(lines[20:24]))
    (tmp_path / "trainSet.txt").write_text("".join(lines[:20]))
    ds = load_dataset(tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (20, 4, 6)
    assert ds.split_of(ds.val[0]) == "val"


def test_missing_everything_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path)
