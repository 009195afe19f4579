"""Pseudo-GT generation and STAViS metrics throughput (issue 4).

1. Pseudo-GT frames/s: ``sta_models.pseudogt`` (both stages, HDF5 in and out) against a
   straightforward per-frame implementation of the same steps written below, the way the public
   code does it: CAMs read as PNG files one frame at a time, fusion per frame, the α search with a
   per-pixel Python loop, boxes smoothed in Python loops, crops and maps written as PNGs. A second
   baseline run replaces the per-pixel loop with Python-level row/column scans of numpy rows.
   All three run side by side in interleaved rounds (``--repeats``, best time kept), and an
   I/O-only pass (the same file reads and writes with the results preloaded) gives the floor
   that no amount of faster compute can go below. CAM files are format 2 (class-map-size maps,
   upsampled when read: S 16², SA/ST 8², as a 256 px input gives); ours also runs on the same
   maps in format 1 (356² float16 per second, the files before issue 16), with its I/O floor.
2. Metrics frames/s: the full STAViS protocol (blur, resize, CC, NSS, SIM, KLD, AUC-J, AUC-B and
   s-AUC with 100 splits) on 360×640 GT, from files and in memory.

Run: ``.venv/bin/python bench/bench_pseudogt.py [--rows 8] [--metric-frames 100]`` (< 3 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
from scipy.io import savemat

from sta_models import evaluation as E
from sta_models import pseudogt as P
from sta_models.ave import AnnotationRow
from sta_models.cam_files import read_cam_file, write_cam_file
from sta_models.config import EvaluateConfig, PseudoGTConfig

BRANCHES = ("s", "sa", "st")
NATIVE = {"s": 16, "sa": 8, "st": 8}  # class-map grid of a 256 px input (stride 16 for S, 32 for SA/ST)
SIZE = 356
SECONDS = 10


# ------------------------------------------------------------------------------------------------
# Synthetic inputs (the same content for both implementations)
# ------------------------------------------------------------------------------------------------


SCENARIOS = {
    # name: (blob σ range in px, background activation level)
    "broad CAMs + background": ((20.0, 40.0), 0.15),  # the box passes min_box at the first α steps
    "compact CAMs, zero background": ((8.0, 14.0), 0.0),  # α walks down many steps
}


def _blob_cams(rng: np.random.Generator, n: int, centre: np.ndarray, sigma=(20.0, 40.0), noise=0.15) -> np.ndarray:  # noqa: ANN001
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    cams = np.empty((n, SIZE, SIZE), np.float32)
    for i in range(n):
        cy, cx = centre + rng.normal(0, 8, 2)
        sig = rng.uniform(*sigma)
        g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig * sig))
        cams[i] = g + noise * rng.random((SIZE, SIZE))  # background activations
        cams[i] /= cams[i].max()
    return cams


def _frames(rng: np.random.Generator) -> np.ndarray:
    """Picture-like frames (smooth shapes and texture, not white noise, which no PNG encoder can shrink)."""
    base = cv2.GaussianBlur(rng.integers(0, 255, (SECONDS, SIZE, SIZE, 3), dtype=np.uint8).reshape(-1, SIZE, 3),
                            (0, 0), 4).reshape(SECONDS, SIZE, SIZE, 3)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    ramp = ((yy + xx) * (255 / (2 * SIZE))).astype(np.uint8)[None, ..., None]
    return cv2.addWeighted(base, 0.5, np.broadcast_to(ramp, base.shape).copy(), 0.5, 0)


def make_inputs(root: Path, n_rows: int, seed: int = 0, sigma=(20.0, 40.0), noise=0.15):  # noqa: ANN001, ANN201
    """HDF5 features + coarse/fine CAM files for our code, PNG copies for the per-frame baseline."""
    rng = np.random.default_rng(seed)
    rows = [AnnotationRow("Bark", 2, f"v{i:03d}", 0, SECONDS, i + 2) for i in range(n_rows)]
    dirs = {
        "features": root / "features", "png": root / "png",
        **{f"coarse_{b}": root / f"coarse_{b}" for b in BRANCHES},
        **{f"fine_{b}": root / f"fine_{b}" for b in BRANCHES},
        **{f"coarse_{b}_f1": root / f"coarse_{b}_f1" for b in BRANCHES},
        **{f"fine_{b}_f1": root / f"fine_{b}_f1" for b in BRANCHES},
    }
    for d in dirs.values():
        d.mkdir(parents=True)
    meta: dict[str, dict] = {}
    for row in rows:
        frames = _frames(rng)
        with h5py.File(dirs["features"] / f"{row.video_id}.h5", "w") as f:
            f.create_dataset("frames", data=frames, chunks=(1, SIZE, SIZE, 3))
            f["audio"] = rng.standard_normal((SECONDS, 81, 199)).astype(np.float32)
            f["audio_valid"] = np.ones(SECONDS, bool)
            f.attrs["video_id"] = row.video_id
        pdir = dirs["png"] / row.key
        (pdir / "frames").mkdir(parents=True)
        for s in range(SECONDS):
            cv2.imwrite(str(pdir / "frames" / f"{s:05d}.png"), frames[s][..., ::-1])
        centre = rng.uniform(100, 256, 2)
        meta[row.key] = {}
        for stage in ("coarse", "fine"):
            for b in BRANCHES:
                cams = _blob_cams(rng, SECONDS, centre if stage == "coarse" else np.array([178.0, 178.0]),
                                  sigma, noise)
                pred = np.where(rng.random(SECONDS) < 0.7, 2, 5)
                prob = rng.uniform(0.3, 0.95, SECONDS).astype(np.float32)
                native = [cv2.resize(c, (NATIVE[b],) * 2, interpolation=cv2.INTER_AREA) for c in cams]
                path = dirs[f"{stage}_{b}"] / f"{row.key}.h5"
                write_cam_file(path,  # the pipeline's own CAM file writer
                               {"cams": native, "seconds": list(range(SECONDS)), "pred_class": pred,
                                "pred_prob": prob, "true_prob": prob}, {"branch": b, "canvas": SIZE})
                cams = read_cam_file(path).cams  # the maps every implementation works on
                with h5py.File(dirs[f"{stage}_{b}_f1"] / f"{row.key}.h5", "w") as f:  # format 1: canvas maps
                    f.create_dataset("cams", data=cams, chunks=(1, SIZE, SIZE))
                    f["seconds"], f["pred_class"] = np.arange(SECONDS, dtype=np.int32), pred.astype(np.int16)
                    f["pred_prob"], f["true_prob"] = prob, prob
                cams = cams.astype(np.float32)
                cdir = pdir / f"{stage}_{b}"
                cdir.mkdir()
                for s in range(SECONDS):
                    cv2.imwrite(str(cdir / f"{s:05d}.png"), np.uint8(np.rint(cams[s] * 255)))
                meta[row.key][f"{stage}_{b}"] = {"pred": pred.tolist(), "prob": prob.tolist()}
    return rows, {"dirs": dirs, "meta": meta}


# ------------------------------------------------------------------------------------------------
# The straightforward per-frame implementation (public-code style)
# ------------------------------------------------------------------------------------------------


def _naive_fuse(cams: list[np.ndarray], probs: list[float], eps: float) -> np.ndarray:
    num = np.zeros_like(cams[0])
    den = 0.0
    for cam, p in zip(cams, probs, strict=True):
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-12)
        num = num + p * cam
        den += p
    f = (num + eps) / (den + eps)
    return (f - f.min()) / (f.max() - f.min() + 1e-12)


def _naive_grow(box: list[int], found: bool, cfg: PseudoGTConfig, h: int, w: int) -> list[int]:
    """The same fallback as the library: grow the last box around its centre to min_box."""
    if found or box == [0, 0, h, w]:
        return box
    out = []
    for lo, hi, size in ((box[0], box[2], h), (box[1], box[3], w)):
        length = max(hi - lo, min(cfg.min_box, size))
        start = min(max((lo + hi) // 2 - length // 2, 0), size - length)
        out.append((start, start + length))
    return [out[0][0], out[1][0], out[0][1], out[1][1]]


def _naive_box(f: np.ndarray, cfg: PseudoGTConfig) -> list[int]:
    h, w = f.shape
    alpha = cfg.alpha_start
    box = [0, 0, h, w]
    while alpha > 1e-9:
        thr = alpha * f.mean()
        ys = [y for y in range(h) if (f[y] > thr).any()]  # python-level scan of rows
        xs = [x for x in range(w) if (f[:, x] > thr).any()]  # and of columns
        if ys and xs:
            box = [min(ys), min(xs), max(ys) + 1, max(xs) + 1]
            if box[2] - box[0] >= min(cfg.min_box, h) and box[3] - box[1] >= min(cfg.min_box, w):
                return box
        alpha -= cfg.alpha_step
    return _naive_grow(box, False, cfg, h, w)


def _naive_box_pixels(f: np.ndarray, cfg: PseudoGTConfig) -> list[int]:
    """The α search with a per-pixel Python loop, as research scripts write it."""
    h, w = f.shape
    rows = f.tolist()
    mean = sum(sum(r) for r in rows) / (h * w)
    alpha = cfg.alpha_start
    box = [0, 0, h, w]
    while alpha > 1e-9:
        thr = alpha * mean
        y0, x0, y1, x1 = h, w, -1, -1
        for y in range(h):
            r = rows[y]
            for x in range(w):
                if r[x] > thr:
                    y0, y1 = min(y0, y), max(y1, y)
                    x0, x1 = min(x0, x), max(x1, x)
        if y1 >= 0:
            box = [y0, x0, y1 + 1, x1 + 1]
            if box[2] - box[0] >= min(cfg.min_box, h) and box[3] - box[1] >= min(cfg.min_box, w):
                return box
        alpha -= cfg.alpha_step
    return _naive_grow(box, False, cfg, h, w)


def naive_pseudo_gt(rows: list[AnnotationRow], info: dict, out: Path, cfg: PseudoGTConfig,
                    box_fn=_naive_box_pixels) -> int:  # noqa: ANN001
    png, meta = info["dirs"]["png"], info["meta"]
    n = 0
    for row in rows:
        pdir, m = png / row.key, meta[row.key]
        rdir = out / row.key
        rdir.mkdir(parents=True)
        boxes = []
        for s in row.seconds:  # coarse: fuse and box, one frame at a time
            cams, probs = [], []
            for b in BRANCHES:
                if m[f"coarse_{b}"]["pred"][s] == row.category_id:
                    cams.append(cv2.imread(str(pdir / f"coarse_{b}" / f"{s:05d}.png"), 0).astype(np.float32) / 255)
                    probs.append(m[f"coarse_{b}"]["prob"][s])
            if not cams:
                cams = [cv2.imread(str(pdir / f"coarse_{b}" / f"{s:05d}.png"), 0) / 255.0 for b in BRANCHES]
                probs = [1.0] * len(cams)
            boxes.append(box_fn(_naive_fuse(cams, probs, cfg.fusion_eps), cfg))
        smooth = []
        for t in range(len(boxes)):  # box smoothing, coordinate by coordinate
            prev = boxes[t - 1] if t > 0 else boxes[t]
            nxt = boxes[t + 1] if t + 1 < len(boxes) else boxes[t]
            smooth.append([int(round((prev[k] + boxes[t][k] + nxt[k]) / 3)) for k in range(4)])
        for t, s in enumerate(row.seconds):  # crops
            y0, x0, y1, x1 = smooth[t]
            frame = cv2.imread(str(pdir / "frames" / f"{s:05d}.png"))
            cv2.imwrite(str(rdir / f"crop_{s:05d}.png"), cv2.resize(frame[y0:y1, x0:x1], (SIZE, SIZE)))
        fused, secs = [], []
        for t, s in enumerate(row.seconds):  # fine: paste back and fuse
            y0, x0, y1, x1 = smooth[t]
            cams, probs = [], []
            for b in BRANCHES:
                if m[f"fine_{b}"]["pred"][s] == row.category_id:
                    cam = cv2.imread(str(pdir / f"fine_{b}" / f"{s:05d}.png"), 0).astype(np.float32) / 255
                    canvas = np.zeros((SIZE, SIZE), np.float32)
                    canvas[y0:y1, x0:x1] = cv2.resize(cam, (x1 - x0, y1 - y0))
                    cams.append(canvas)
                    probs.append(m[f"fine_{b}"]["prob"][s])
            if cams:
                fused.append(_naive_fuse(cams, probs, cfg.fusion_eps))
                secs.append(s)
        half = cfg.smooth_window // 2
        for s in secs:  # temporal smoothing, sparsification, one PNG per map
            acc, cnt = np.zeros((SIZE, SIZE), np.float32), 0
            for j, s2 in enumerate(secs):
                if abs(s2 - s) <= half:
                    acc += fused[j]
                    cnt += 1
            g = acc / cnt
            g = (g - g.min()) / (g.max() - g.min() + 1e-12)
            g[g < min(cfg.sparsify_factor * g.mean(), g.max())] = 0
            cv2.imwrite(str(rdir / f"pgt_{s:05d}.png"), np.uint8(g * 255))
            n += 1
    return sum(len(r.seconds) for r in rows)


# ------------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------------


def _io_only(rows: list[AnnotationRow], d: dict, done: Path, out: Path, suffix: str = "") -> float:
    """The file reads and writes of both stages alone: the floor for ``sta_models.pseudogt``.

    Same files read (feature-file metadata and the previewed frames, CAM files through
    ``read_cam_file``, which upsamples format 2, and the crop files) and the same files written
    (crop and pseudo-GT HDF5 with the same datasets, chunks and attributes, the PNG previews,
    the JSON reports) as the real run in ``done``, whose results are loaded first (not timed),
    so nothing is computed in between. ``suffix`` "_f1" reads the format 1 CAM files. Returns seconds.
    """
    keep: dict[str, tuple] = {}

    def load(path: Path) -> tuple:
        with h5py.File(path, "r") as f:
            return {k: f[k][()] for k in f}, dict(f.attrs), {k: f[k].chunks for k in f}

    def pngs(folder: Path, row: AnnotationRow) -> dict:
        return {p.name: cv2.imread(str(p)) for p in sorted(folder.glob(f"{row.key}_s*.png"))}

    for row in rows:
        keep[row.key] = (load(done / "crops" / f"{row.key}.h5"), load(done / "pgt" / f"{row.key}.h5"),
                         pngs(done / "crops" / "previews", row), pngs(done / "pgt" / "previews", row))
    reports = {name: json.loads((done / sub / name).read_text())
               for sub, name in (("crops", "crops.json"), ("pgt", "report.json"))}

    def h5_writer(data: dict, attrs: dict, chunks: dict):  # noqa: ANN202
        def write(f: h5py.File) -> None:
            for k, v in data.items():
                f.create_dataset(k, data=v, chunks=chunks[k])
            for k, v in attrs.items():
                f.attrs[k] = v
        return write

    def frames(video: str, names: dict) -> list:
        with h5py.File(d["features"] / f"{video}.h5", "r") as f:
            _ = f["frames"].shape, f["audio_valid"][()], dict(f.attrs)
            return [f["frames"][int(name[-7:-4])] for name in names]

    (out / "previews").mkdir(parents=True)
    (out / "crop_previews").mkdir(parents=True)
    t0 = time.perf_counter()
    for row in rows:  # stage 1
        (crop, _, crop_previews, _) = keep[row.key]
        frames(row.video_id, crop_previews)
        for b in BRANCHES:
            read_cam_file(d[f"coarse_{b}{suffix}"] / f"{row.key}.h5", dtype=np.float32)  # as the stage reads
        P._write_h5_atomic(out / f"{row.key}.crop.h5", h5_writer(*crop))
        for name, img in crop_previews.items():
            cv2.imwrite(str(out / "crop_previews" / name), img)
    (out / "crops.json").write_text(json.dumps(reports["crops.json"], indent=2, sort_keys=True))
    for row in rows:  # stage 2
        (_, pgt, _, previews) = keep[row.key]
        with h5py.File(out / f"{row.key}.crop.h5", "r") as f:
            _ = f["boxes"][()], f["audio_valid"][()], f["has_box"][()], dict(f.attrs)
        frames(row.video_id, previews)
        for b in BRANCHES:
            read_cam_file(d[f"fine_{b}{suffix}"] / f"{row.key}.h5", dtype=np.float32)
        P._write_h5_atomic(out / f"{row.key}.pgt.h5", h5_writer(*pgt))
        for name, img in previews.items():
            cv2.imwrite(str(out / "previews" / name), img)
    (out / "report.json").write_text(json.dumps(reports["report.json"], indent=2, sort_keys=True))
    return time.perf_counter() - t0


def bench_pseudogt(n_rows: int, root: Path, sigma=(20.0, 40.0), noise=0.15, repeats: int = 2) -> dict:  # noqa: ANN001
    """Both implementations side by side, ``repeats`` interleaved rounds, best time of each."""
    cfg = PseudoGTConfig()
    rows, info = make_inputs(root / "in", n_rows, sigma=sigma, noise=noise)
    d = info["dirs"]
    frames = n_rows * SECONDS
    times: dict[str, list[float]] = {k: [] for k in ("naive", "naive_rows", "ours", "ours_coarse", "io",
                                                     "ours_f1", "io_f1")}
    for r in range(repeats):  # interleaved, so a busy moment on the shared machine hits all of them
        run = root / f"run{r}"
        t0 = time.perf_counter()
        naive_pseudo_gt(rows, info, run / "naive", cfg)
        times["naive"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        naive_pseudo_gt(rows, info, run / "naive_rows", cfg, box_fn=_naive_box)
        times["naive_rows"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        P.coarse_boxes_and_crops({b: d[f"coarse_{b}"] for b in BRANCHES}, rows, d["features"], run / "crops", cfg)
        times["ours_coarse"].append(time.perf_counter() - t0)
        P.fuse_pseudo_gt({b: d[f"fine_{b}"] for b in BRANCHES}, run / "crops", rows, run / "pgt", cfg)
        times["ours"].append(time.perf_counter() - t0)
        times["io"].append(_io_only(rows, d, run, run / "io"))
        t0 = time.perf_counter()  # the same maps as format 1 CAM files (before issue 16)
        P.coarse_boxes_and_crops({b: d[f"coarse_{b}_f1"] for b in BRANCHES}, rows, d["features"], run / "crops_f1", cfg)
        P.fuse_pseudo_gt({b: d[f"fine_{b}_f1"] for b in BRANCHES}, run / "crops_f1", rows, run / "pgt_f1", cfg)
        times["ours_f1"].append(time.perf_counter() - t0)
        times["io_f1"].append(_io_only(rows, d, run, run / "io_f1", "_f1"))
    t_naive, t_naive_rows, t_ours, t_coarse, t_io, t_f1, t_io_f1 = (
        min(times[k]) for k in ("naive", "naive_rows", "ours", "ours_coarse", "io", "ours_f1", "io_f1"))
    with h5py.File(run / "pgt" / f"{rows[0].key}.h5") as a, h5py.File(run / "pgt_f1" / f"{rows[0].key}.h5") as b:
        same_maps = float(np.abs(a["maps"][()].astype(np.float32) - b["maps"][()].astype(np.float32)).max())
    cam_bytes = {fmt: sum(p.stat().st_size for b in BRANCHES for p in d[f"fine_{b}{fmt}"].glob("*.h5")) / n_rows
                 for fmt in ("", "_f1")}
    # compute only: box search of the fused coarse maps, in memory, both ways
    rng = np.random.default_rng(1)
    cams = _blob_cams(rng, 40, np.array([178.0, 178.0]), sigma, noise)
    maps = np.stack([_naive_fuse([c], [1.0], 1e-4) for c in cams])
    t0 = time.perf_counter()
    naive_boxes = [_naive_box(m, cfg) for m in maps]
    t_box_naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    boxes, _ = P.box_from_map(maps, cfg.alpha_start, cfg.alpha_step, cfg.min_box)
    t_box = time.perf_counter() - t0
    agree = float(np.mean(np.all(np.abs(np.array(naive_boxes) - boxes) <= 1, axis=1)))
    return {
        "frames": frames, "repeats": repeats, "naive_s": t_naive, "ours_s": t_ours, "ours_coarse_s": t_coarse,
        "naive_fps": frames / t_naive, "ours_fps": frames / t_ours, "speedup": t_naive / t_ours,
        "naive_rowscan_s": t_naive_rows, "naive_rowscan_fps": frames / t_naive_rows,
        "speedup_vs_rowscan": t_naive_rows / t_ours,
        "ours_ms_per_frame": 1e3 * t_ours / frames, "io_only_ms_per_frame": 1e3 * t_io / frames,
        "io_fraction_of_ours": t_io / t_ours, "speedup_bound_if_compute_free": t_naive / t_io,
        "box_naive_fps": len(maps) / t_box_naive, "box_fps": len(maps) / t_box, "box_speedup": t_box_naive / t_box,
        "box_agreement_1px": agree,
        "format1_cams_ms_per_frame": 1e3 * t_f1 / frames, "format1_io_only_ms_per_frame": 1e3 * t_io_f1 / frames,
        "format1_vs_format2_max_map_diff": same_maps,
        "cam_bytes_per_row_stage": {"format2": cam_bytes[""], "format1": cam_bytes["_f1"]},
    }


def bench_metrics(n_frames: int, root: Path) -> dict:
    rng = np.random.default_rng(2)
    h, w = 360, 640
    yy, xx = np.mgrid[0:h, 0:w]
    gt, pred = root / "gt", root / "pred"
    per_video = 20
    for i in range(n_frames):
        video, k = f"vid{i // per_video:02d}", i % per_video + 1
        (gt / video / "maps").mkdir(parents=True, exist_ok=True)
        (pred / video).mkdir(parents=True, exist_ok=True)
        cy, cx = rng.uniform(60, 300), rng.uniform(100, 540)
        g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 30.0**2))
        cv2.imwrite(str(gt / video / "maps" / f"eyeMap_{k:05d}.jpg"), np.uint8(g * 255))
        fix = np.zeros((h, w), np.uint8)
        pts = np.clip(rng.normal([cy, cx], 25, (60, 2)).round().astype(int), 0, [h - 1, w - 1])
        fix[pts[:, 0], pts[:, 1]] = 1
        savemat(gt / video / f"fixMap_{k:05d}.mat", {"eyeMap": fix}, do_compression=True)
        p = cv2.resize(g.astype(np.float32), (356, 356)) + 0.2 * rng.random((356, 356), np.float32)
        cv2.imwrite(str(pred / video / f"{k:05d}.png"), np.uint8(255 * p / p.max()))
    cfg = EvaluateConfig()  # 100 splits, step .1, σ = 2
    t0 = time.perf_counter()
    rep = E.evaluate_folder(pred, gt, cfg=cfg)
    t_files = time.perf_counter() - t0
    assert rep.frames == n_frames
    # in memory: post-processing + 7 metrics only
    g = np.exp(-((yy - 180) ** 2 + (xx - 320) ** 2) / (2 * 30.0**2))
    fix = np.zeros((h, w), bool)
    fix[rng.integers(150, 210, 60), rng.integers(290, 350, 60)] = True
    other = np.zeros((h, w), bool)
    other[rng.integers(0, h, 600), rng.integers(0, w, 600)] = True
    p = rng.random((356, 356))
    reps = min(n_frames, 50)
    t0 = time.perf_counter()
    for i in range(reps):
        E.score_frame(E.postprocess_prediction(p), g, fix, other & ~fix, cfg, np.random.default_rng(i))
    t_mem = time.perf_counter() - t0
    return {"frames": n_frames, "files_fps": n_frames / t_files, "memory_fps": reps / t_mem,
            "dataset": rep.dataset}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=6, help="annotation rows of 10 s at 356×356")
    ap.add_argument("--metric-frames", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds per pseudo-GT scenario (best kept)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_pgt_"))
    try:
        pg = {name: bench_pseudogt(args.rows, root / f"pgt{i}", sigma, noise, args.repeats)
              for i, (name, (sigma, noise)) in enumerate(SCENARIOS.items())}
        me = bench_metrics(args.metric_frames, root / "metrics")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                      "pseudo_gt": pg, "metrics": me}, indent=2, default=float))


if __name__ == "__main__":
    main()
