"""Frames/s of ``predict --every-frame`` (each frame's backbone features once, reused for its
neighbours) against the naive loop (the full STA on each (t−1, t, t+1) triple: three backbone
passes per frame), side by side in one run (issue 13; target ≥ 2.5×).

Both paths read the same STAViS frame folder (a generated 25 fps clip with a WAV), compute the
same audio windows and give the same maps (checked here). Measured twice: "model" = frames read,
prepared and predicted, maps delivered to a no-op; "with PNGs" = each map resized to the frame
size and written as ``%05d.png`` as ``stapipe predict`` does. Interleaved rounds, best kept, as
wall time and as this process's CPU time (all threads): on a machine shared with other jobs the
CPU-time ratio is the stable one. STA is randomly initialised (speed does not depend on the weights).

Run: ``.venv/bin/python bench/bench_every_frame.py`` (demo preset sizes, about 2 min on 2 cores);
on a GPU: ``--device cuda --preset paper``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from sta_models.clips import open_frame_folder
from sta_models.every_frame import predict_every_frame
from sta_models.networks.sta import STA
from sta_models.predict import to_uint8
from sta_models.synth_stavis import SynthVideo, generate_stavis

PRESETS = {"demo": ("resnet18", 160, 112), "paper": ("resnext101_32x8d", 356, 356), "tiny": ("resnet18", 112, 96)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--size", default="320x240", help="frame size of the generated clip")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone, frame_size, input_size = PRESETS[args.preset]
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = STA(backbone, use_cache=False).to(device).eval()
    w, h = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-every-frame-") as tmp:
        root = generate_stavis(Path(tmp) / "stavis", "BENCH", (SynthVideo("clip", args.fps, args.seconds),),
                               size=(w, h))
        clip = open_frame_folder(root / "video_frames" / "BENCH" / "clip", args.fps, root / "video_audio" / "BENCH")
        out = Path(tmp) / "png"
        out.mkdir()

        def png(i: int, m: np.ndarray) -> None:
            cv2.imwrite(str(out / f"{i + 1:05d}.png"), to_uint8(cv2.resize(m, (clip.width, clip.height))))

        def run(reuse: bool, sink) -> tuple[tuple[float, float], int, dict[int, np.ndarray]]:  # noqa: ANN001
            maps: dict[int, np.ndarray] = {}

            def keep(i: int, m: np.ndarray) -> None:
                if sink is not None:
                    sink(i, m)
                if i % 17 == 0:
                    maps[i] = m

            if device.type == "cuda":
                torch.cuda.synchronize()
            stats = predict_every_frame(model, clip, keep, input_size=input_size, frame_size=frame_size,
                                        device=device, batch_size=args.batch_size, reuse=reuse)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return (stats.seconds, stats.cpu_seconds), stats.backbone_frames, maps

        run(True, None)  # warm-up (allocator, cuDNN autotune, page cache)
        best: dict[tuple[str, bool], tuple[float, float]] = {}
        passes: dict[bool, int] = {}
        maps: dict[bool, dict[int, np.ndarray]] = {}
        for _ in range(args.rounds):
            for mode, sink in (("model", None), ("with PNGs", png)):
                for reuse in (False, True):
                    t, passes[reuse], maps[reuse] = run(reuse, sink)
                    old = best.get((mode, reuse), (float("inf"), float("inf")))
                    best[(mode, reuse)] = (min(old[0], t[0]), min(old[1], t[1]))
        diff = max(float(np.abs(maps[True][i] - maps[False][i]).max()) for i in maps[True])
    n = clip.n_frames
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, device {device}"
                   + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "torch_threads": torch.get_num_threads(), "preset": args.preset, "backbone": backbone,
        "frame_size": frame_size, "input_size": input_size, "frames": n, "fps": args.fps,
        "clip_size": args.size, "batch_size": args.batch_size, "rounds": args.rounds,
        "backbone_passes": {"every_frame": passes[True], "naive": passes[False]},
        "max_map_difference": diff,
    }
    print(f"{n} frames at {args.fps:g} fps, {args.size}; {args.preset} preset ({backbone}, {frame_size} → {input_size} "
          f"px), batch {args.batch_size}, {device}; best of {args.rounds} interleaved rounds")
    print(f"backbone passes: every-frame {passes[True]}, naive {passes[False]}; max map difference {diff:.2e}")
    print("| measured | clock | naive loop, frames/s | --every-frame, frames/s | speed-up |")
    print("|---|---|---|---|---|")
    for mode in ("model", "with PNGs"):
        for c, clock in enumerate(("wall", "CPU")):
            slow, fast = n / best[(mode, False)][c], n / best[(mode, True)][c]
            result[f"{mode} ({clock})"] = {"naive_fps": round(slow, 2), "every_frame_fps": round(fast, 2),
                                           "ratio": round(fast / slow, 2)}
            print(f"| {mode} | {clock} | {slow:.2f} | {fast:.2f} | **{fast / slow:.2f}×** |")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
