"""``worker.disk.folder_bytes`` (gc's folder sizes, bench_disk's totals): a hard link — a running
stage's ``prev.weights.pt`` of its ``best.pt`` — is one copy on the disk, not two."""

from __future__ import annotations

import os
from pathlib import Path

from worker.disk import folder_bytes


def test_a_hard_link_counts_once_and_a_symlink_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "best.pt").write_bytes(b"w" * 1000)
    os.link(tmp_path / "best.pt", tmp_path / "prev.weights.pt")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "last.pt").write_bytes(b"o" * 300)
    (tmp_path / "elsewhere").symlink_to(tmp_path / "sub" / "last.pt")
    assert folder_bytes(tmp_path) == 1000 + 300 + len(str(tmp_path / "sub" / "last.pt"))
