"""Log tail reading and the path containment rules (unit level)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dashboard.logs import MAX_CHUNK, read_from, tail_lines
from dashboard.paths import PathRejected, resolve_dataset_root, safe_artefact_file


def test_tail_lines_returns_the_last_lines_and_an_offset_to_continue(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(1, 5001)))
    chunk = tail_lines(log, 3)
    assert chunk.text == "line 4998\nline 4999\nline 5000\n"
    assert chunk.next_offset == log.stat().st_size
    assert log.read_bytes()[chunk.offset:].decode() == chunk.text
    with log.open("a") as fh:
        fh.write("line 5001\n")
    more = read_from(log, chunk.next_offset)
    assert more.text == "line 5001\n"
    assert more.next_offset == log.stat().st_size


def test_tail_of_a_short_file_and_missing_file(tmp_path: Path) -> None:
    log = tmp_path / "short.log"
    log.write_text("a\nb")
    assert tail_lines(log, 10).text == "a\nb"
    assert tail_lines(tmp_path / "none.log", 10).exists is False
    assert read_from(None, 0).exists is False


def test_read_from_is_bounded_and_stops_at_a_line_end(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(b"".join(b"%07d %s\n" % (i, b"x" * 90) for i in range(10000)))
    chunk = read_from(log, 0)
    assert 0 < len(chunk.text) <= MAX_CHUNK
    assert chunk.text.endswith("\n")
    assert chunk.next_offset < chunk.size
    rest = read_from(log, chunk.next_offset)
    assert rest.text.startswith(f"{chunk.text.count(chr(10)):07d}")


def test_read_from_restarts_after_truncation(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    log.write_text("new\n")
    assert read_from(log, 1000).text == "new\n"


def test_dataset_root_rules(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "ave" / "sub").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (data / "escape").symlink_to(tmp_path / "secret")
    (data / "inner").symlink_to(data / "ave")
    (data / "file.txt").write_text("x")
    assert resolve_dataset_root("ave", data) == (data / "ave").resolve()
    assert resolve_dataset_root(str(data / "ave" / "sub"), data) == (data / "ave" / "sub").resolve()
    assert resolve_dataset_root("inner", data) == (data / "ave").resolve()  # symlink inside is fine
    for bad, message in [
        ("../secret", "inside the data root"), (str(tmp_path / "secret"), "inside the data root"),
        ("escape", "inside the data root"), ("ave/../../secret", "inside the data root"),
        ("missing", "no such folder"), ("", "enter a dataset folder"), (".", "inside the data root"),
        ("file.txt", "not a folder"), ("a\x00b", "NUL"),
    ]:
        with pytest.raises(PathRejected, match=message):
            resolve_dataset_root(bad, data)


def test_safe_artefact_file(tmp_path: Path) -> None:
    root = tmp_path / "artefacts"
    root.mkdir()
    (root / "ok.png").write_bytes(b"x")
    (tmp_path / "passwd").write_text("x")
    (root / "link.png").symlink_to(tmp_path / "passwd")
    assert safe_artefact_file(root / "ok.png", root) == (root / "ok.png").resolve()
    assert safe_artefact_file("ok.png", root) == (root / "ok.png").resolve()
    assert safe_artefact_file(root / "link.png", root) is None
    assert safe_artefact_file(root / ".." / "passwd", root) is None
    assert safe_artefact_file(root / "gone.png", root) is None
    assert safe_artefact_file(root, root) is None
    assert os.path.exists(tmp_path / "passwd")
