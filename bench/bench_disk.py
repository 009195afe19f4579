"""Disk per artefact kind, before and after issue 16, and whether reading crops from boxes slows training.

1. Bytes per video-second of each artefact kind, written by the pipeline's own writers for one
   10-second row at the paper's sizes (356 px frames, class maps of 256 px inputs: S 16², SA/ST 8²)
   on picture-like frames: features, CAM files of one stage (3 branches; format 1 = 356² float16
   maps, format 2 = class-map-size maps), crop files (format 1 = frames + audio copied; format 2 =
   boxes), pseudo-GT maps, and the preview PNGs (heat-map overlays, crops).
2. Fine-stage sample reads (``FeatureDataset``, ST: 3 frames, 356 px stored, 256 px input, and S)
   from format 1 crop files against format 2 box files, interleaved rounds, best kept.
3. The estimate (``sta_models.disk_estimate``) for the ``tiny`` preset on 12 six-second clips and
   the ``paper`` preset on AVE (the 4,143 annotations of tests/data_files), before and after, with
   today's checkpoints and with weights-only ``best.pt``.
4. ``--pipeline``: a real ``tiny`` pipeline (``stapipe demo --preset tiny --classes 3
   --videos-per-class 4 --seconds 6``, embedded stack, one worker of 2 tasks) in a fresh home: the
   bytes each stage recorded (what the pipeline page and API show), ``du`` of its folder (each
   inode once), the total, and the artefact folder's peak while it ran (sampled every 0.2 s).
   ``--keep DIR`` leaves that home in DIR (to try ``stapipe gc --dry-run`` or the API on it).

Run: ``.venv/bin/python bench/bench_disk.py [--rounds 3]`` (~1 min on 2 cores);
``.venv/bin/python bench/bench_disk.py --pipeline`` (several minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import h5py
import numpy as np

from sta_models import pseudogt as P
from sta_models.ave import AnnotationRow, read_annotations
from sta_models.cam_files import read_cam_file, write_cam_file
from sta_models.cams import heatmap_overlay
from sta_models.config import PseudoGTConfig, preset
from sta_models.crop_files import crop_frames
from sta_models.datasets import FeatureDataset, close_handles
from sta_models.disk_estimate import DatasetSize, estimate
from worker.disk import folder_bytes  # each inode once, as `stapipe gc` counts

SIZE, SECONDS = 356, 10
NATIVE = {"s": 16, "sa": 8, "st": 8}
ROOT = Path(__file__).resolve().parents[1]


def _frames(rng: np.random.Generator) -> np.ndarray:
    base = cv2.GaussianBlur(rng.integers(0, 255, (SECONDS * SIZE, SIZE, 3), dtype=np.uint8), (0, 0), 4)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    ramp = ((yy + xx) * (255 / (2 * SIZE))).astype(np.uint8)[..., None]
    return cv2.addWeighted(base.reshape(SECONDS, SIZE, SIZE, 3), 0.5,
                           np.broadcast_to(ramp, (SECONDS, SIZE, SIZE, 3)).copy(), 0.5, 0)


def _blob(rng: np.random.Generator, n: int) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n] / n
    cy, cx = rng.uniform(0.3, 0.7, 2)
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02) + 0.1 * rng.random((n, n))


def measure_bytes(root: Path) -> dict:
    """Bytes per second of the row, per artefact kind, from files the real writers wrote."""
    rng = np.random.default_rng(0)
    row = AnnotationRow("Bark", 2, "v", 0, SECONDS, 2)
    feat = root / "features"
    feat.mkdir()
    frames = _frames(rng)
    with h5py.File(feat / "v.h5", "w") as f:  # extraction's layout (sta_models.extraction._write)
        f.create_dataset("frames", data=frames, chunks=(1, SIZE, SIZE, 3))
        f.create_dataset("audio", data=rng.standard_normal((SECONDS, 81, 199)).astype(np.float32), chunks=(1, 81, 199))
        f.create_dataset("audio_valid", data=np.ones(SECONDS, bool))
        f.attrs["video_id"] = "v"
    out: dict[str, float] = {"features": (feat / "v.h5").stat().st_size}
    cams: dict[str, dict[str, int]] = {"format1": {}, "format2": {}}
    for stage in ("coarse", "fine"):
        for b, n in NATIVE.items():
            d = root / f"cams_{stage}" / b
            d.mkdir(parents=True)
            maps = [_blob(rng, n) for _ in range(SECONDS)]
            data = {"cams": maps, "seconds": list(range(SECONDS)), "pred_class": [2] * SECONDS,
                    "pred_prob": [0.8] * SECONDS, "true_prob": [0.7] * SECONDS}
            write_cam_file(d / "v.c02.h5", data, {"branch": b, "key": row.key, "video_id": "v", "category_id": 2,
                                                  "canvas": SIZE, "checkpoint": "/x/best.pt"})
            up = read_cam_file(d / "v.c02.h5").cams
            old = root / f"f1_{stage}_{b}.h5"  # format 1: what the writer stored before issue 16
            with h5py.File(old, "w") as f:
                f.create_dataset("cams", data=up, chunks=(1, SIZE, SIZE))
                for k in ("seconds", "pred_class", "pred_prob", "true_prob"):
                    f[k] = np.asarray(data[k])
            cams["format1"][f"{stage}_{b}"] = old.stat().st_size
            cams["format2"][f"{stage}_{b}"] = (d / "v.c02.h5").stat().st_size
    out["cams_per_stage_format1"] = sum(v for k, v in cams["format1"].items() if k.startswith("coarse"))
    out["cams_per_stage_format2"] = sum(v for k, v in cams["format2"].items() if k.startswith("coarse"))
    cfg = PseudoGTConfig()
    P.coarse_boxes_and_crops({b: root / "cams_coarse" / b for b in NATIVE}, [row], feat, root / "crops", cfg)
    out["crops_format2"] = (root / "crops" / "v.c02.h5").stat().st_size
    with h5py.File(root / "crops" / "v.c02.h5") as f:
        boxes, has_box = f["boxes"][()], f["has_box"][()]
    old = root / "crops_f1.h5"
    with h5py.File(feat / "v.h5") as src, h5py.File(old, "w") as f:  # format 1: frames and audio copied, cropped
        cropped = crop_frames(src["frames"][()], range(SECONDS), boxes, has_box)
        f.create_dataset("frames", data=cropped, chunks=(1, SIZE, SIZE, 3))
        f.create_dataset("audio", data=src["audio"][()], chunks=(1, 81, 199))
        for k in ("audio_valid",):
            f[k] = src[k][()]
        f["boxes"], f["has_box"] = boxes, has_box
    out["crops_format1"] = old.stat().st_size
    P.fuse_pseudo_gt({b: root / "cams_fine" / b for b in NATIVE}, root / "crops", [row], root / "pgt", cfg)
    out["pseudo_gt"] = (root / "pgt" / "v.c02.h5").stat().st_size
    cam_previews = []
    for k in range(3):
        cv2.imwrite(str(root / f"cam_prev{k}.png"), heatmap_overlay(frames[k], read_cam_file(
            root / "cams_fine" / "s" / "v.c02.h5").cams[k].astype(np.float32)))
        cam_previews.append((root / f"cam_prev{k}.png").stat().st_size)
    crop_previews = [p.stat().st_size for p in (root / "crops" / "previews").glob("*.png")]
    pgt_previews = [p.stat().st_size for p in (root / "pgt" / "previews").glob("*.png")]
    per_second = {k: v / SECONDS for k, v in out.items()}
    return {"bytes_per_row_second": per_second, "cam_files": cams,
            "png_bytes_per_pixel": {"cam_overlay": float(np.mean(cam_previews)) / SIZE**2,
                                    "crop_preview": float(np.mean(crop_previews)) / (2 * SIZE**2),
                                    "pseudo_gt_preview": float(np.mean(pgt_previews)) / SIZE**2}}


def measure_reads(root: Path, rounds: int) -> dict:
    """Fine-stage samples/s from format 1 crop files and from format 2 box files."""
    rows = [AnnotationRow("Bark", 2, "v", 0, SECONDS, 2)]
    old_dir = root / "crops_f1"
    old_dir.mkdir()
    shutil.copy(root / "crops_f1.h5", old_dir / "v.c02.h5")
    res: dict[str, dict[str, float]] = {}
    for kind in ("st", "s"):
        best = {"format1": float("inf"), "format2": float("inf")}
        for _ in range(rounds):
            for name, d in (("format1", old_dir), ("format2", root / "crops")):
                close_handles()
                ds = FeatureDataset(rows, d, kind, 256)
                ds[0]  # open the handles
                t0 = time.perf_counter()
                for _ in range(5):
                    for i in range(len(ds)):
                        ds[i]
                best[name] = min(best[name], (time.perf_counter() - t0) / (5 * len(ds)))
        res[kind] = {f"{k}_samples_per_s": 1 / v for k, v in best.items()}
        res[kind]["format2_over_format1_time"] = best["format2"] / best["format1"]
    return res


def estimates() -> dict:
    tiny_rows = [AnnotationRow("c", c, f"v{c}{j}", 0, 6, 0) for c in range(3) for j in range(4)]
    ave_rows, _ = read_annotations(ROOT / "tests" / "data_files" / "Annotations.txt")
    out = {}
    for name, cfg, rows in (("tiny_12x6s", preset("tiny"), tiny_rows), ("paper_ave", preset("paper"), ave_rows)):
        ds = DatasetSize.of_rows(rows, rows[: max(1, len(rows) // 10)])
        out[name] = {"dataset": vars(ds)}
        for fmt in ("before", "after"):
            for ck in ("today", "slim"):
                e = estimate(cfg, ds, checkpoints=ck, formats=fmt)  # type: ignore[arg-type]
                out[name][f"{fmt}_{ck}_checkpoints"] = {"total_GB": sum(e.values()) / 1e9,
                                                       **{k: round(v / 1e6, 1) for k, v in e.items()}}
    return out


def run_pipeline(home: Path, overrides: list[str]) -> dict:
    """Run the ``tiny`` demo pipeline in ``home``; per-stage bytes, total and the peak while running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAPIPE_")}
    env.update(STAPIPE_HOME=str(home), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "worker.cli", "demo", "--preset", "tiny", "--classes", "3", "--videos-per-class",
           "4", "--seconds", "6", "--workers", "1", "--concurrency", "2", "--no-dashboard", "--exit",
           *(a for o in overrides for a in ("--set", o))]
    peak, stop = [0, ""], threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            root = home / "artefacts"
            n = folder_bytes(root) if root.is_dir() else 0
            if n > peak[0]:
                running = [d.name for d in root.glob("*/*") if (d / "last.pt").exists()]
                peak[:] = [n, ", ".join(sorted(running))]

    t0 = time.perf_counter()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"the tiny pipeline failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    db = sqlite3.connect(home / "stapipe.db")
    stages = []
    for kind, output_dir, n, files in db.execute(
            "select s.kind, s.output_dir, coalesce(sum(a.size), 0), count(a.id) from stages s "
            "left join artefacts a on a.stage_id = s.id group by s.id order by s.position"):
        du = folder_bytes(Path(output_dir)) if output_dir and Path(output_dir).is_dir() else 0
        stages.append({"kind": kind, "recorded_bytes": n, "files": files, "du_bytes": du})
    return {"seconds": time.perf_counter() - t0, "stages": stages,
            "recorded_total": sum(s["recorded_bytes"] for s in stages),
            "du_total": sum(s["du_bytes"] for s in stages),
            "checkpoints_recorded": sum(s["recorded_bytes"] for s in stages if s["kind"].startswith("train_")),
            "peak_while_running": peak[0], "peak_with_last_pt_in": peak[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pipeline", action="store_true", help="run a real tiny pipeline and measure what it keeps")
    ap.add_argument("--keep", type=Path, default=None, help="with --pipeline: leave the stack's home here")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="with --pipeline: passed to stapipe demo (e.g. 'coarse.*.epochs=2': bytes kept do not "
                         "depend on the epoch count, the run time does)")
    args = ap.parse_args()
    if args.pipeline:
        home = args.keep or Path(tempfile.mkdtemp(prefix="bench_disk_pipeline_"))
        try:
            out = run_pipeline(home, args.overrides)
        finally:
            if args.keep is None:
                shutil.rmtree(home, ignore_errors=True)
        print(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                          "overrides": args.overrides, "pipeline": out, "estimates": estimates()}, indent=2, default=float))
        return
    root = Path(tempfile.mkdtemp(prefix="bench_disk_"))
    try:
        sizes = measure_bytes(root)
        reads = measure_reads(root, args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                      "sizes": sizes, "reads": reads, "estimates": estimates()}, indent=2, default=float))


if __name__ == "__main__":
    main()
