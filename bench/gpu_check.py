"""The paper preset on a GPU, measured in one short run (issue 17); ``--small`` on a CPU in the suite.

1. **Networks** — S, SA, ST at 256 and 356 and STA at 356 (ResNeXt-101 32x8d, the paper's batch
   sizes 64/40/20 and STA's 8): forward+backward+SGD step, samples/s in fp32 and in bf16 autocast +
   channels_last, peak GPU memory, and whether the batch fits (an out-of-memory is a "no", not a crash).
2. **Data pipeline** — SA at 256 from per-video HDF5 features (``FeatureDataset`` + ``make_loader``)
   with N DataLoader workers: samples/s delivered alone, against samples/s the GPU consumes
   (section 1, bf16), and the GPU busy share when the loader feeds the training step (target ≥ 90 %).
3. **CAM extraction and prediction** — ``compute_cams`` (S at 356) and ``predict_every_frame`` (STA at
   356 on a generated 25 fps clip: what ``stapipe predict --every-frame`` runs) in frames/s, through
   the pipeline's own functions.
4. **End to end** — a ``tiny`` pipeline through the real worker on the embedded default (``stapipe
   run``: SQLite + filesystem broker) with every stage on the accelerator, its wall time, and its
   STA/centre metrics against the same pipeline on the CPU (``--set *.device=cpu``) within
   ``TOLERANCE``. Without CUDA both runs are on the CPU and only the plumbing is checked.
5. **Deterministic mode** — the cost of ``train.deterministic`` (issue 18): section 1's training
   step of each network at its first size (bf16 + channels_last on CUDA, fp32 on the CPU) inside
   the trainer's own ``DeterministicMode`` off and on, samples/s and the ratio.

Run: ``make gpu-check`` (``.venv/bin/python bench/gpu_check.py --write-results``; under 8 min on one
H100/H200). ``--small``: resnet18, 32 px, batches of 2, 1 worker at most — a minute on a busy CPU
(tests/bench/test_gpu_check.py). Results are appended to bench/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.timing import loss_of, step_times, sync, synthetic_batch  # noqa: E402
from sta_models.ave import AnnotationRow  # noqa: E402
from sta_models.config import TrainConfig  # noqa: E402
from sta_models.datasets import FeatureDataset, close_handles, prepare_batch  # noqa: E402
from sta_models.networks import build_branch, param_groups  # noqa: E402
from sta_models.networks.sta import STA  # noqa: E402
from sta_models.trainer import (  # noqa: E402
    CHECKPOINT_FORMAT,
    DeterministicMode,
    SeededSampler,
    atomic_save,
    autocast_for,
    build_optimizer,
    make_loader,
    to_channels_last,
)

SECTION = "## GPU check: the paper preset on one GPU (issue 17)"
TOLERANCE = 0.05  # |accelerator − CPU| on each dataset metric of the tiny pipeline (CC, NSS, …)
GPU_BUSY_TARGET = 0.90


@dataclass(frozen=True)
class Shapes:
    """What one run measures: the paper's shapes, or tiny ones for the CPU test."""

    backbone: str
    sizes: dict[str, tuple[int, ...]]  # network -> input sizes
    batch: dict[str, int]
    workers: tuple[int, ...]
    steps: int
    videos: int
    seconds: int
    frame_size: int  # stored frame size of the HDF5 features
    clip_seconds: float  # length of the 25 fps clip the every-frame prediction runs on
    e2e: tuple[str, ...]  # extra `stapipe run` arguments for the end-to-end pipeline


PAPER = Shapes(backbone="resnext101_32x8d", sizes={"s": (256, 356), "sa": (256, 356), "st": (256, 356), "sta": (356,)},
               batch={"s": 64, "sa": 40, "st": 20, "sta": 8}, workers=(0, 2, 4, 8), steps=6, videos=16,
               seconds=10, frame_size=356, clip_seconds=8.0, e2e=())
SMALL = Shapes(backbone="resnet18", sizes={"s": (32,), "sa": (32,), "st": (32,), "sta": (32,)},
               batch={"s": 2, "sa": 2, "st": 2, "sta": 2}, workers=(0, 1), steps=1, videos=2, seconds=3,
               frame_size=48, clip_seconds=1.0, e2e=("--set", "coarse.*.epochs=1", "--set", "fine.*.epochs=1", "--set", "sta.epochs=1"))


@dataclass
class Report:
    device: str
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ok: bool = True

    def add(self, *cells: Any) -> None:
        self.rows.append([str(c) for c in cells])
        print(" | ".join(str(c) for c in cells), flush=True)


# ------------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[Callable[[], float]]:
    """Peak allocated GPU memory in GiB inside the block (0 on the CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    yield lambda: torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def build(net: str, backbone: str, device: torch.device, fast: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = STA(backbone, use_cache=False) if net == "sta" else build_branch(net, backbone, use_cache=False)
    model.to(device).train()
    if fast:
        to_channels_last(model)
    return model


def train_rate(net: str, backbone: str, size: int, batch: int, device: torch.device, fast: bool,
               steps: int) -> tuple[float, float]:
    """(samples/s, peak GiB) of forward+backward+step; raises on out-of-memory."""
    model = build(net, backbone, device, fast)
    opt, _ = build_optimizer(param_groups(model), TrainConfig())  # type: ignore[arg-type]
    x = synthetic_batch(net, size, batch, device, fast)
    amp = (lambda: autocast_for(device)) if fast else contextlib.nullcontext
    with peak_memory(device) as peak:
        rate = steps * batch / sum(step_times(net, model, opt, x, device, steps, amp))
        gib = peak()
    del model, opt, x
    return rate, gib


# ----------------------------------------------------------------------------------------- sections


def check_networks(rep: Report, shapes: Shapes, device: torch.device) -> dict[tuple[str, int], float]:
    """Section 1; returns bf16 (or fp32 on the CPU) samples/s per (network, size) for section 2."""
    rep.add("network", "input", "batch", "fp32 samples/s", "bf16+CL samples/s", "speed-up", "peak GiB fp32 / bf16",
            "fits")
    consumed: dict[tuple[str, int], float] = {}
    for net, sizes in shapes.sizes.items():
        for size in sizes:
            batch = shapes.batch[net]
            res: dict[bool, tuple[float, float] | str] = {}
            for fast in (False, True):
                if fast and device.type != "cuda":
                    res[fast] = "n/a (CPU)"
                    continue
                try:
                    res[fast] = train_rate(net, shapes.backbone, size, batch, device, fast, shapes.steps)
                except RuntimeError as exc:
                    if not is_oom(exc):
                        raise
                    res[fast] = "out of memory"
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            fits = all(not isinstance(v, str) or v.startswith("n/a") for v in res.values())
            rep.ok &= fits
            fp32, bf16 = res[False], res[True]
            best = bf16 if isinstance(bf16, tuple) else fp32
            if isinstance(best, tuple):
                consumed[(net, size)] = best[0]
            rep.add(net.upper(), size, batch, _rate(fp32), _rate(bf16),
                    f"{bf16[0] / fp32[0]:.2f}x" if isinstance(fp32, tuple) and isinstance(bf16, tuple) else "–",
                    f"{_gib(fp32)} / {_gib(bf16)}", "yes" if fits else "NO")
    return consumed


def _rate(v: tuple[float, float] | str) -> str:
    return f"{v[0]:.1f}" if isinstance(v, tuple) else v


def _gib(v: tuple[float, float] | str) -> str:
    return f"{v[1]:.1f}" if isinstance(v, tuple) else "–"


def make_features(root: Path, shapes: Shapes) -> list[AnnotationRow]:
    """Per-video HDF5 files in the extraction's layout (uint8 frames, log-spectrograms)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for v in range(shapes.videos):
        vid = f"vid{v:03d}"
        with h5py.File(root / f"{vid}.h5", "w") as f:
            f["frames"] = rng.integers(0, 255, (shapes.seconds, shapes.frame_size, shapes.frame_size, 3), np.uint8)
            f["audio"] = rng.normal(size=(shapes.seconds, 81, 199)).astype(np.float32)
            f["audio_valid"] = np.ones(shapes.seconds, bool)
        rows.append(AnnotationRow("c", v % 28, vid, 0, shapes.seconds, line=v + 1))
    return rows


def check_loader(rep: Report, shapes: Shapes, device: torch.device, features: Path, rows: list[AnnotationRow],
                 consumed: dict[tuple[str, int], float]) -> None:
    """Section 2: SA at the coarse size, the heaviest loader (frame + audio per sample)."""
    size, batch = shapes.sizes["sa"][0], shapes.batch["sa"]
    need = consumed.get(("sa", size), 0.0)
    fast = device.type == "cuda"
    rep.add("DataLoader workers", "delivered samples/s", f"consumed by SA {size} samples/s", "GPU busy (fed)",
            "keeps up", "", "", "")
    model = build("sa", shapes.backbone, device, fast)
    opt, _ = build_optimizer(param_groups(model), TrainConfig())  # type: ignore[arg-type]
    for workers in shapes.workers:
        ds = FeatureDataset(rows, features, "sa", size, train=True)
        loader = make_loader(ds, batch, sampler=SeededSampler(len(ds), 0), workers=workers, device=device)
        for _ in loader:  # warm-up pass: workers start, files open
            pass
        n, t0 = 0, time.perf_counter()
        for raw in loader:
            prepare_batch(raw, device)
            n += len(raw["label"])
        sync(device)
        delivered = n / (time.perf_counter() - t0)
        busy_s, t0 = 0.0, time.perf_counter()
        for raw in loader:
            x = prepare_batch(raw, device)
            if fast:
                x["image"] = x["image"].contiguous(memory_format=torch.channels_last)
            s0 = time.perf_counter()
            with autocast_for(device) if fast else contextlib.nullcontext():
                loss = loss_of("sa", model, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync(device)
            busy_s += time.perf_counter() - s0
        busy = busy_s / (time.perf_counter() - t0)
        keeps_up = busy >= GPU_BUSY_TARGET
        rep.add(workers, f"{delivered:.1f}", f"{need:.1f}", f"{busy:.0%}", "yes" if keeps_up else "no", "", "", "")
        del loader
        close_handles()
    del model, opt


def check_inference(rep: Report, shapes: Shapes, device: torch.device, features: Path,
                    rows: list[AnnotationRow], tmp: Path) -> None:
    """Section 3, through the pipeline's own functions and checkpoint format."""
    from sta_models.cams import compute_cams
    from sta_models.every_frame import predict_every_frame
    from sta_models.training import model_meta

    fine = shapes.sizes["s"][-1]
    cfg = TrainConfig(backbone=shapes.backbone, input_size=fine, batch_size=shapes.batch["s"])
    branch = build_branch("s", shapes.backbone, use_cache=False)
    ckpt = tmp / "s.pt"
    atomic_save({"format": CHECKPOINT_FORMAT, "meta": model_meta("s", cfg), "model": branch.state_dict()}, ckpt)
    frames = sum(r.end - r.start for r in rows)
    t0 = time.perf_counter()
    compute_cams("s", ckpt, rows, features, tmp / "cams", canvas=shapes.frame_size, device=str(device),
                 batch_size=shapes.batch["s"], previews_per_row=0)
    sync(device)
    cams_fps = frames / (time.perf_counter() - t0)

    sta_size = shapes.sizes["sta"][0]
    model = STA(shapes.backbone, use_cache=False).to(device).eval()
    if device.type == "cuda":
        to_channels_last(model)
    clip = stavis_clip(tmp / "stavis", shapes)
    run = lambda: predict_every_frame(model, clip, lambda i, m: None, input_size=sta_size,  # noqa: E731
                                      frame_size=shapes.frame_size, device=device, batch_size=shapes.batch["sta"])
    run()  # warm-up
    sync(device)
    predict_fps = run().fps  # the maps come back to the host batch by batch: nothing left to sync
    rep.add(f"CAM extraction (S, {fine} px)", f"{cams_fps:.1f} frames/s",
            f"predict --every-frame (STA, {sta_size} px, {clip.n_frames} frames at {clip.fps:g} fps)",
            f"{predict_fps:.1f} frames/s", "", "", "", "")


def stavis_clip(root: Path, shapes: Shapes):  # type: ignore[no-untyped-def]
    """A generated 25 fps STAViS clip with its WAV, as ``stapipe predict --every-frame`` reads one."""
    from sta_models.clips import open_frame_folder
    from sta_models.synth_stavis import SynthVideo, generate_stavis

    fps = 25.0
    generate_stavis(root, "BENCH", (SynthVideo("clip", fps, shapes.clip_seconds),), size=(320, 240))
    return open_frame_folder(root / "video_frames" / "BENCH" / "clip", fps, root / "video_audio" / "BENCH")


def run_pipeline(tmp: Path, name: str, dataset: Path, extra: tuple[str, ...]) -> tuple[float, dict[str, dict[str, float]]]:
    """`stapipe run` on a fresh embedded home: (wall s, {method: dataset metrics})."""
    home = tmp / name
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAPIPE_")}
    env.update(STAPIPE_HOME=str(home), STAPIPE_DATA_ROOT=str(dataset.parent), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "worker.cli", "run", "--preset", "tiny", "--dataset", str(dataset),
           "--workers", "1", "--name", name, *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    with contextlib.closing(sqlite3.connect(home / "stapipe.db")) as db:
        (summary,) = db.execute("select summary from stages where kind = 'evaluate'").fetchone()
    metrics = json.loads(summary)["metrics"]  # the evaluate stage's summary: {method: dataset values}
    return wall, {m: {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
                  for m, values in metrics.items()}


def check_end_to_end(rep: Report, shapes: Shapes, device: torch.device, tmp: Path) -> None:
    """Section 4: the tiny pipeline on the accelerator vs on the CPU."""
    from sta_models.synth import generate

    dataset = generate(tmp / "data" / "ave", classes=3, videos_per_class=3 if shapes is SMALL else 4,
                       seconds=4, size=(128, 96), seed=0)
    cpu = ("--set", "coarse.*.device=cpu", "--set", "fine.*.device=cpu", "--set", "sta.device=cpu")
    wall_dev, on_dev = run_pipeline(tmp, "accelerator", dataset, shapes.e2e)
    if device.type == "cuda":
        wall_cpu, on_cpu = run_pipeline(tmp, "cpu", dataset, (*shapes.e2e, *cpu))
    else:
        wall_cpu, on_cpu = wall_dev, on_dev
        rep.notes.append("no CUDA: the end-to-end comparison ran once on the CPU (plumbing only)")
    worst = max(abs(on_dev[m][k] - on_cpu[m][k]) for m in on_cpu for k in on_cpu[m])
    same = worst <= TOLERANCE
    rep.ok &= same
    sta_cc = on_dev["sta"].get("cc", float("nan"))
    rep.add(f"tiny pipeline end to end ({device.type})", f"{wall_dev:.0f} s", "on the CPU", f"{wall_cpu:.0f} s",
            f"STA CC {sta_cc:.3f}", f"max |Δ| {worst:.4f}", f"tolerance {TOLERANCE}", "same" if same else "DIFFERENT")


def check_deterministic(rep: Report, shapes: Shapes, device: torch.device) -> None:
    """Section 5: ``train.deterministic``'s cost, through the trainer's own switch."""
    fast = device.type == "cuda"
    rep.add("deterministic mode", "input", "batch", "samples/s off", "samples/s on", "on / off", "", "")
    for net, sizes in shapes.sizes.items():
        size, batch = sizes[0], shapes.batch[net]
        rates = []
        for on in (False, True):
            if fast:
                torch.backends.cudnn.benchmark = True  # what main() sets; DeterministicMode turns it off
            with DeterministicMode(on):
                rates.append(train_rate(net, shapes.backbone, size, batch, device, fast, shapes.steps)[0])
        rep.add(f"{net.upper()} deterministic", size, batch, f"{rates[0]:.1f}", f"{rates[1]:.1f}",
                f"{rates[1] / rates[0]:.2f}x", "", "")


# --------------------------------------------------------------------------------------------- main


def machine(device: torch.device) -> str:
    from bench_dataloader import cpu_name  # bench/ is on sys.path: this script's folder

    cpu = cpu_name()
    gpu = "no GPU"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        gpu = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    return f"{gpu}; {os.cpu_count()} × {cpu}; torch {torch.__version__}; Python {platform.python_version()}"


def markdown(rep: Report, shapes_name: str, device: torch.device) -> str:
    lines = [SECTION, "", f"`bench/gpu_check.py{' --small' if shapes_name == 'small' else ''}` on {machine(device)}, "
             f"{time.strftime('%Y-%m-%d')}.", ""]
    for k, row in enumerate(rep.rows):
        lines.append("| " + " | ".join(row) + " |")
        if k == 0:
            lines.append("|" + "---|" * len(row))
    lines += [""] + [f"- {n}" for n in rep.notes] + [f"- overall: {'OK' if rep.ok else 'NOT OK'}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny shapes (the CPU test)")
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    ap.add_argument("--skip", action="append", default=[],
                    choices=("networks", "loader", "inference", "e2e", "deterministic"))
    ap.add_argument("--write-results", action="store_true", help="append the table to bench/RESULTS.md")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    shapes = SMALL if args.small else PAPER
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rep = Report(str(device))
    print(f"# {machine(device)}", flush=True)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        consumed: dict[tuple[str, int], float] = {}
        if "networks" not in args.skip:
            consumed = check_networks(rep, shapes, device)
        rows = make_features(tmp / "features", shapes)
        if "loader" not in args.skip:
            check_loader(rep, shapes, device, tmp / "features", rows, consumed)
        if "inference" not in args.skip:
            check_inference(rep, shapes, device, tmp / "features", rows, tmp)
        if "e2e" not in args.skip:
            check_end_to_end(rep, shapes, device, tmp)
        if "deterministic" not in args.skip:
            check_deterministic(rep, shapes, device)
    rep.notes.append(f"whole check: {time.perf_counter() - t_start:.0f} s")
    text = markdown(rep, "small" if args.small else "paper", device)
    print(text)
    if args.write_results:
        with args.results.open("a") as fh:
            fh.write("\n" + text)
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
