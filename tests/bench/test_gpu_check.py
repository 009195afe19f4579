"""bench/gpu_check.py on the CPU with ``--small`` shapes, so the GPU run (issue 17) cannot rot.

Every section runs through the same code as on a GPU: the networks' training steps, the
DataLoader over HDF5 features, CAM extraction and prediction through the pipeline's functions,
and a tiny pipeline through the real worker on the embedded default. Without CUDA the fp32/bf16
comparison and the accelerator-vs-CPU pipeline comparison have only one side (said in the table).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def test_gpu_check_small_runs_every_section_and_writes_the_table(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--small", "--device", "cpu",
                           "--write-results", "--results", str(results)], cwd=ROOT, capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# Benchmarks\n") and "## GPU check: the paper preset on one GPU (issue 17)" in text
    assert "`bench/gpu_check.py --small` on no GPU" in text
    for row in ("| S | 32 | 2 |", "| SA | 32 | 2 |", "| ST | 32 | 2 |", "| STA | 32 | 2 |", "| 0 |", "| 1 |",
                "| CAM extraction (S, 32 px) |", "| tiny pipeline end to end (cpu) |",
                "| SA deterministic | 32 | 2 |", "| STA deterministic | 32 | 2 |"):
        assert row in text, row
    assert "n/a (CPU)" in text and "plumbing only" in text and "overall: OK" in text
    table = [line for line in text.splitlines() if line.startswith("| tiny pipeline")]
    assert "| same |" in table[0]
