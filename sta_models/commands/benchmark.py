"""``stapipe benchmark``: the paper's table on the STAViS sets (AVAD, DIEM, SumMe, ETMD, Coutrot1/2).

Predicts every frame of each set with a trained STA, scores it with the STAViS protocol next to
the centre-bias baseline and STANet's published row, writes ``benchmark.json|csv|md`` in
``--out`` and prints the table. Bad input: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import sys


def _benchmark(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from sta_models.benchmark import BenchmarkError, run_benchmark
    from sta_models.callbacks import Callbacks
    from sta_models.clips import ClipError
    from sta_models.config import EvaluateConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    bar = tqdm(unit="step", desc="benchmark", file=sys.stderr, disable=args.quiet)

    def progress(done: int, total: int, what: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_description(what[:40])
        bar.refresh()

    sets = [s.strip() for s in args.db.split(",") if s.strip()] if args.db else None
    try:
        table = run_benchmark(args.checkpoint, args.stavis, args.out, sets, fps=args.fps, device=args.device,
                              batch_size=args.batch_size, cfg=EvaluateConfig(n_splits=args.splits),
                              allow_missing=args.allow_missing, overlay=args.overlay,
                              callbacks=Callbacks(progress=progress))
    except (BenchmarkError, ClipError, FileNotFoundError, OSError, ValueError, RuntimeError) as exc:
        bar.close()
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    bar.close()
    print(table.text())
    for name, run in table.runs.items():
        print(f"{name}: {run['videos']} videos, {run['frames_scored']} frames scored, {run['frames_missing']} missing, "
              f"{run['frames_nan']} NaN; frame rates from {run['fps_source']}")
    print(f"wrote {args.out}/benchmark.json, benchmark.csv and benchmark.md")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("benchmark", help="the paper's table on the STAViS sets (predict + evaluate)")
    p.add_argument("--checkpoint", required=True, metavar="STA.pt", help="best.pt/last.pt of train_sta")
    p.add_argument("--stavis", required=True, metavar="ROOT",
                   help="STAViS root: video_frames/, video_audio/, annotations/, fold_lists/")
    p.add_argument("--db", metavar="LIST", help="comma-separated sets, e.g. AVAD,DIEM (default: all present)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--fps", type=float, help="frame rate when a set has no fold lists")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--splits", type=int, default=100, help="AUC-Borji / s-AUC splits (default 100)")
    p.add_argument("--allow-missing", action="store_true", help="score sets whose predictions miss GT frames")
    p.add_argument("--overlay", action="store_true", help="also write overlay videos")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_benchmark)
