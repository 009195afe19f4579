"""``stapipe evaluate``: score a folder of predicted maps with the STAViS protocol (SPEC §7).

Writes ``metrics.json`` and ``metrics.csv`` and prints a table; with ``--baseline centre`` the
centre-bias baseline is scored on the same videos and reported beside the predictions.
Predictions must cover every GT frame (matched by number: ``<N>.png`` ↔ ``eyeMap_<N>.jpg``);
otherwise the command refuses with a one-line reason and writes nothing, unless
``--allow-missing``. A ``--gt`` without STAViS ground truth writes nothing either.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sta_models.callbacks import Callbacks
    from sta_models.config import EvaluateConfig
    from sta_models.evaluation import (
        check_coverage,
        evaluate_baseline,
        evaluate_folder,
        format_table,
        write_reports,
    )

    cfg = EvaluateConfig(n_splits=args.splits, seed=args.seed, blur_sigma=args.sigma)
    bar = tqdm(unit="frame", desc="evaluate", file=sys.stderr, disable=args.quiet or not sys.stderr.isatty())

    def progress(done: int, total: int, what: str) -> None:
        bar.total = total
        bar.set_description(what)
        bar.n = done
        bar.refresh()

    cb = Callbacks(progress=progress)
    try:
        coverage = check_coverage(args.pred, args.gt)
    except (FileNotFoundError, OSError) as exc:
        bar.close()
        print(f"error: {exc}; nothing written", file=sys.stderr)
        return 2
    if not coverage.complete and not args.allow_missing:
        bar.close()
        print(f"error: predictions do not cover the ground truth: {coverage.reason()}; nothing written "
              "(per-second maps against per-frame GT? predict with --every-frame, or pass --allow-missing)",
              file=sys.stderr)
        return 1
    try:
        reports = [evaluate_folder(args.pred, args.gt, cfg=cfg, callbacks=cb)]
        if args.baseline:
            videos = [v.video for v in reports[0].videos]
            reports.append(evaluate_baseline(args.gt, args.baseline, videos=videos, cfg=cfg, callbacks=cb))
    except (FileNotFoundError, OSError, ValueError) as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar.close()
    out = Path(args.out) if args.out else Path(args.pred)
    json_path, csv_path = write_reports(reports, out / "metrics.json", out / "metrics.csv", config=cfg)
    print(format_table(reports, per_video=not args.summary))
    for v in reports[0].videos:
        print(f"{v.video}: {v.frames_scored} GT frames scored, {v.frames_missing} missing, {v.frames_nan} NaN")
    for line in reports[0].problems():
        print(f"warning: {line}", file=sys.stderr)
    print(f"wrote {json_path} and {csv_path}")
    if reports[0].frames == 0:
        print("error: no frame could be scored (no prediction matches the ground truth)", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="score predicted saliency maps against STAViS-layout GT")
    p.add_argument("--pred", required=True, metavar="DIR", help="<video>/<NNNNN>.png|jpg maps")
    p.add_argument("--gt", required=True, metavar="DIR", help="<video>/maps/eyeMap_NNNNN.jpg + fixMap_NNNNN.mat")
    p.add_argument("--protocol", choices=["stavis"], default="stavis")
    p.add_argument("--out", metavar="DIR", help="where metrics.json/csv go (default: --pred)")
    p.add_argument("--baseline", choices=["centre"], help="also score a baseline on the same videos")
    p.add_argument("--splits", type=int, default=100, help="AUC-Borji / s-AUC splits (default 100)")
    p.add_argument("--sigma", type=float, default=2.0, help="prediction blur σ in px (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--summary", action="store_true", help="print only the dataset rows")
    p.add_argument("--allow-missing", action="store_true",
                   help="score what is there even when predictions miss GT frames (counted per video)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_evaluate)
