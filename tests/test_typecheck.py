"""mypy over the packages ([tool.mypy] in pyproject.toml), as ``make lint`` runs it: CI fails on a type error.

The first run in a fresh clone builds ``.mypy_cache`` (about a minute of CPU, most of it torch's
stubs); later runs take seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_is_clean() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mypy found type errors (run `make lint`):\n{report}"
    assert "Success: no issues found" in report, report


def test_mypy_would_catch_an_error(tmp_path: Path) -> None:
    """The configuration is live: a wrong return type in a checked module is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f() -> int:\n    return 'x'\n\n\ndef g(x):\n    return x\n")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--cache-dir", str(tmp_path / "cache"), str(bad)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert "[return-value]" in proc.stdout and "[no-untyped-def]" in proc.stdout, proc.stdout
