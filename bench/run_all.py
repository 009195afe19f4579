"""Run every benchmark in turn (``make bench``); each prints its own side-by-side ratios.

Results worth keeping go into bench/RESULTS.md by hand, with the machine they ran on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    "bench_extraction.py",  # issue 2: extractor vs the public tooling's way vs ffmpeg decode alone
    "bench_dataloader.py",  # issue 3: data pipeline vs per-sample JPEG/HDF5 loading; training step
    "bench_pseudogt.py",  # issue 4: vectorised pseudo-GT vs a per-frame loop; STAViS metrics
    "bench_queue.py",  # issue 5: extraction through the queue vs direct; orchestration overhead
    "bench_dashboard.py",  # issue 6: dashboard latency on PostgreSQL with 200 pipelines
    "bench_end_to_end.py",  # issue 7: the demo preset end to end, STA vs centre bias vs pseudo-GT
    "bench_every_frame.py",  # issue 13: predict --every-frame (features reused) vs three backbone passes per frame
    "bench_cpu_threads.py",  # issue 18: two trainings side by side, torch default threads vs the shared count
)


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"\n===== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name)]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
