"""``stapipe predict``: saliency maps (PNG) and overlay videos from a trained STA checkpoint.

Bad input is reported in one line on stderr with a non-zero exit status, never as a traceback:
2 when nothing could start (checkpoint, input path), 1 when some videos failed.
"""

from __future__ import annotations

import argparse
import sys


def _predict(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from sta_models.callbacks import Callbacks
    from sta_models.predict import predict_videos

    if args.threads:
        torch.set_num_threads(args.threads)
    bar = tqdm(total=None, unit="video", desc="predict", file=sys.stderr, disable=not sys.stderr.isatty())

    def progress(done: int, total: int, what: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(what, refresh=False)
        bar.refresh()

    try:
        results = predict_videos(args.checkpoint, args.videos, args.out, device=args.device,
                                 overlay=not args.no_overlay, batch_size=args.batch_size,
                                 cache_dir=args.cache_dir, every_frame=args.every_frame, audio_dir=args.audio,
                                 fps=args.fps, callbacks=Callbacks(progress=progress))
    except (FileNotFoundError, ValueError, OSError, RuntimeError) as exc:
        bar.close()
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    bar.close()
    failed = [r for r in results if not r.ok]
    for r in results:
        if r.ok:
            extra = f", overlay {r.overlay}" if r.overlay else ""
            if r.stats is not None:
                print(f"{r.video_id}: {r.frames} frame maps ({r.fps:g} fps, audio: {r.audio_note}, "
                      f"{r.stats.fps:.1f} frames/s) in {r.png_dir}{extra}")
            else:
                print(f"{r.video_id}: {r.seconds} maps in {r.png_dir}{extra}")
    for r in failed:
        print(f"failed: {r.error}", file=sys.stderr)
    print(f"{len(results) - len(failed)} of {len(results)} videos predicted into {args.out}")
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="saliency maps and overlay videos with a trained STA (docs/method.md §6)")
    p.add_argument("--checkpoint", required=True, metavar="STA.pt", help="best.pt/last.pt of train_sta")
    p.add_argument("--videos", required=True, metavar="DIR_OR_FILE",
                   help="an .mp4/.h5 file, a folder of them, or STAViS video_frames/<DB> (<video>/img_%%05d.jpg)")
    p.add_argument("--audio", metavar="DIR", help="STAViS video_audio/<DB> (<video>/<video>.wav); a missing WAV "
                   "is silence, marked")
    p.add_argument("--fps", metavar="N|FOLD_LIST", help="frame rate of frame folders: a number, or a STAViS fold "
                   "list (<video> <nframes> <fps>) or a folder of *_fps.txt lists")
    frames = p.add_mutually_exclusive_group()
    frames.add_argument("--every-frame", dest="every_frame", action="store_true", default=None,
                        help="a map for every frame, named like the GT (default for frame folders)")
    frames.add_argument("--every-second", dest="every_frame", action="store_false",
                        help="one map per second (default for video and feature files)")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/<id>/%%05d.png and DIR/<id>_overlay.mp4")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--no-overlay", action="store_true", help="write only the PNG maps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--cache-dir", default=None, help="keep extracted feature files here (default: temporary)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    p.set_defaults(func=_predict)
