"""``stapipe synth``, ``stapipe extract`` and ``stapipe extract-dataset``.

Handlers import the library lazily so ``stapipe --help`` stays fast; bad input is reported in one
line on stderr with a non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from exc
    return w, h


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _synth(args: argparse.Namespace) -> int:
    from sta_models.synth import generate

    try:
        root = generate(args.out_dir, classes=args.classes, videos_per_class=args.videos_per_class,
                        seconds=args.seconds, size=args.size, seed=args.seed)
    except (ValueError, RuntimeError, OSError) as exc:
        return _err(str(exc))
    print(f"wrote {args.classes * args.videos_per_class} videos to {root}")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from sta_models.extraction import ExtractionError, extract_video

    try:
        res = extract_video(args.video, args.out, size=args.size)
    except (ExtractionError, OSError) as exc:
        return _err(str(exc))
    state = "up to date" if res.skipped else "extracted"
    print(f"{state}: {res.path} ({res.seconds} s, {res.audio_seconds} with audio)")
    return 0


def _extract_one(job: tuple[str, str, str, int]) -> tuple[str, str, str]:
    """(video id, "ok"/"skipped"/"failed", reason) — runs in a worker process."""
    from sta_models.extraction import ExtractionError, extract_video

    video_id, video, out, size = job
    try:
        res = extract_video(video, out, size=size, video_id=video_id)
    except (ExtractionError, OSError) as exc:
        return video_id, "failed", str(exc)
    return video_id, "skipped" if res.skipped else "ok", ""


def _extract_dataset(args: argparse.Namespace) -> int:
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    from sta_models.ave import load_dataset

    try:
        dataset = load_dataset(args.root)
    except (FileNotFoundError, OSError) as exc:
        return _err(str(exc))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = sorted({r.video_id for r in dataset.rows})
    jobs = [(v, str(dataset.video_path(v)), str(out / f"{v}.h5"), args.size) for v in ids]
    results: list[tuple[str, str, str]] = []
    bar = tqdm(total=len(jobs), unit="video", desc="extract", file=sys.stderr, disable=not sys.stderr.isatty())
    if args.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for res in pool.map(_extract_one, jobs):
                results.append(res)
                bar.update()
    else:
        for job in jobs:
            results.append(_extract_one(job))
            bar.update()
    bar.close()
    counts = {k: sum(1 for _, s, _ in results if s == k) for k in ("ok", "skipped", "failed")}
    print(f"{counts['ok']} extracted, {counts['skipped']} already up to date, {counts['failed']} failed"
          f" ({len(dataset.problems)} annotation problems)")
    for _, state, reason in results:
        if state == "failed":
            print(f"  failed: {reason}")
    for problem in dataset.problems[:20]:
        print(f"  skipped row: {problem}")
    if len(dataset.problems) > 20:
        print(f"  … and {len(dataset.problems) - 20} more annotation problems")
    return 0 if counts["ok"] + counts["skipped"] > 0 else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synth", help="write a synthetic AVE-layout dataset (docs/method.md §8)")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--videos-per-class", type=int, default=4)
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--size", type=_size, default=(128, 96), help="WIDTHxHEIGHT (default 128x96)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_synth)

    p = subparsers.add_parser("extract", help="extract one video to one HDF5 file (docs/method.md §2)")
    p.add_argument("video", metavar="VIDEO")
    p.add_argument("out", metavar="OUT.h5")
    p.add_argument("--size", type=int, default=356)
    p.set_defaults(func=_extract)

    p = subparsers.add_parser("extract-dataset", help="extract every video of an AVE-layout root")
    p.add_argument("root", metavar="ROOT")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes")
    p.add_argument("--size", type=int, default=356)
    p.set_defaults(func=_extract_dataset)
