"""``stapipe train-branch`` and ``stapipe cams``: thin wrappers over ``sta_models.training``/``cams``.

Configuration = a preset's per-branch ``TrainConfig`` (``--preset``, ``--stage``) with command-line
overrides; progress goes to stderr, one line per epoch to stdout. Bad input is one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sta_models.branches import BRANCHES
from sta_models.config import BACKBONES, PRESETS

OVERRIDES = ("backbone", "input_size", "epochs", "batch_size", "lr", "workers", "device", "seed",
             "backbone_weights", "audio_weights")


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _callbacks() -> Any:
    from tqdm import tqdm

    from sta_models.callbacks import Callbacks

    state: dict[str, Any] = {"bar": None, "what": None}

    def progress(done: int, total: int, what: str) -> None:
        if state["what"] != what:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"] = tqdm(total=total, desc=what, unit="batch", file=sys.stderr, leave=False, disable=not sys.stderr.isatty())
            state["what"] = what
        state["bar"].n = done
        state["bar"].refresh()

    def epoch(m: Any) -> None:
        acc = "-" if m.val_accuracy is None else f"{m.val_accuracy:.3f}"
        val = "-" if m.val_loss is None else f"{m.val_loss:.4f}"
        print(f"epoch {m.epoch}: train loss {m.train_loss:.4f}  val loss {val}  val acc {acc}  "
              f"lr {m.lr:.2e}  {m.seconds:.1f} s  {m.samples_per_s:.1f} samples/s", flush=True)

    return Callbacks(epoch_end=epoch, progress=progress)  # log lines already reach stderr via logging


def _config(args: argparse.Namespace) -> Any:
    from sta_models.config import TrainConfig, preset

    base = getattr(preset(args.preset), args.stage)[args.branch]
    values = base.model_dump()
    values.update({k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None})
    return TrainConfig.model_validate(values)


def _train(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from sta_models.ave import load_dataset
    from sta_models.callbacks import Cancelled
    from sta_models.networks.backbones import WeightsError
    from sta_models.training import train_branch

    try:
        cfg = _config(args)
        dataset = load_dataset(args.dataset)
    except ValidationError as exc:
        return _err("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    except (ValueError, OSError) as exc:
        return _err(str(exc))
    splits = {"train": dataset.train, "val": dataset.val}
    try:
        res = train_branch(args.branch, splits, args.features, args.out, cfg, _callbacks(),
                           resume=not args.no_resume)
    except (WeightsError, ValueError, OSError) as exc:
        return _err(str(exc))
    except Cancelled:
        return _err("cancelled; last.pt holds the last complete epoch")
    print(f"done: {res.epochs_done} epochs, best val acc {res.best_score} at epoch {res.best_epoch}; "
          f"{res.best_checkpoint}")
    return 0


def _cams(args: argparse.Namespace) -> int:
    from sta_models.ave import load_dataset
    from sta_models.cams import compute_cams

    try:
        dataset = load_dataset(args.dataset)
    except (ValueError, OSError) as exc:
        return _err(str(exc))
    rows = dataset.rows if args.split == "all" else getattr(dataset, args.split)
    try:
        summary = compute_cams(args.branch, args.checkpoint, rows, args.features, args.out,
                               canvas=args.canvas, device=args.device, batch_size=args.batch_size,
                               callbacks=_callbacks())
    except (ValueError, OSError) as exc:
        return _err(str(exc))
    print(f"wrote CAMs for {summary.rows_written} rows ({summary.frames} frames, top-1 "
          f"{summary.accuracy:.3f}, {len(summary.skipped_rows)} rows skipped) to {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train-branch", help="train a classifier branch: " + ", ".join(s.label for s in BRANCHES.values()) + " (docs/method.md §3)")
    p.add_argument("--branch", choices=tuple(BRANCHES), required=True)
    p.add_argument("--dataset", required=True, help="AVE-layout root (Annotations.txt, split files, AVE/)")
    p.add_argument("--features", required=True, help="folder of per-video (or per-row crop) HDF5 files")
    p.add_argument("--out", required=True, help="output folder: last.pt, best.pt, record.json")
    p.add_argument("--preset", choices=PRESETS, default="paper")
    p.add_argument("--stage", choices=("coarse", "fine"), default="coarse")
    p.add_argument("--backbone", choices=BACKBONES)
    p.add_argument("--input-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--workers", type=int)
    p.add_argument("--device")
    p.add_argument("--seed", type=int)
    p.add_argument("--backbone-weights", help="torchvision state-dict file (default: hub cache, else random)")
    p.add_argument("--audio-weights", help="VGGSound checkpoint (default: random init)")
    p.add_argument("--no-resume", action="store_true", help="start over even if out/last.pt exists")
    p.set_defaults(func=_train)

    c = subparsers.add_parser("cams", help="class activation maps of a trained branch (docs/method.md §4)")
    c.add_argument("--branch", choices=tuple(BRANCHES), required=True)
    c.add_argument("--checkpoint", required=True, help="best.pt or last.pt of train-branch")
    c.add_argument("--dataset", required=True)
    c.add_argument("--features", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--split", choices=("all", "train", "val", "test"), default="all")
    c.add_argument("--canvas", type=int, default=356, help="CAM size (the stored frame size)")
    c.add_argument("--device", default="auto")
    c.add_argument("--batch-size", type=int, default=16)
    c.set_defaults(func=_cams)
