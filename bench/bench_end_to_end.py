"""End-to-end quality check: the whole pipeline on a synthetic dataset, on the embedded default.

Runs ``stapipe demo`` (synthetic data → extraction → S/SA/ST coarse → CAMs → crops → S/SA/ST fine →
CAMs → pseudo-GT → STA → evaluation) in a fresh home, then prints, side by side on the test split's
ground truth: the STA model, the centre-bias baseline, and the pseudo ground truth itself (how good
the maps STA learnt from are), plus the wall time of every stage.

    python bench/bench_end_to_end.py [--preset demo] [--classes 4] [--videos-per-class 6] [--seconds 6]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import cv2
import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sta_models.ave import load_dataset  # noqa: E402
from sta_models.evaluation import evaluate_folder, format_table  # noqa: E402
from sta_models.evaluation_result import load_evaluation  # noqa: E402


def run_demo(home: Path, args: argparse.Namespace) -> float:
    env = {**os.environ, "STAPIPE_HOME": str(home)}
    for name in ("STAPIPE_DATABASE_URL", "STAPIPE_BROKER_URL", "STAPIPE_DATA_ROOT", "STAPIPE_ARTEFACT_ROOT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "worker.cli", "demo", "--no-dashboard", "--preset", args.preset,
           "--classes", str(args.classes), "--videos-per-class", str(args.videos_per_class),
           "--seconds", str(args.seconds)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"the pipeline failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return wall


def stage_times(db: sqlite3.Connection) -> list[tuple[str, float]]:
    rows = db.execute("select kind, started_at, finished_at from stages order by position").fetchall()
    out = []
    for kind, start, end in rows:
        seconds = (datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds()
        out.append((kind, seconds))
    return out


def pseudo_gt_as_predictions(pgt_dir: Path, test_ids: set[str], out: Path) -> None:
    """Write the pseudo-GT of the test videos in the prediction layout (``<video>/<k+1>.png``)."""
    for path in pgt_dir.glob("*.h5"):
        video_id = path.name.rsplit(".c", 1)[0]
        if video_id not in test_ids:
            continue
        with h5py.File(path, "r") as f:
            maps, seconds = f["maps"][:].astype(np.float32), f["seconds"][:]
        folder = out / video_id
        folder.mkdir(parents=True, exist_ok=True)
        for m, k in zip(maps, seconds, strict=True):
            cv2.imwrite(str(folder / f"{int(k) + 1:05d}.png"), np.clip(m * 255, 0, 255).astype(np.uint8))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--videos-per-class", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=6)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="stapipe-e2e-") as tmp:
        home = Path(tmp) / "home"
        wall = run_demo(home, args)
        db = sqlite3.connect(home / "stapipe.db")
        (pipeline_id, dataset_root) = db.execute("select id, dataset_root from pipelines").fetchone()
        (metrics_path,) = db.execute(
            "select a.path from artefacts a join stages s on s.id = a.stage_id "
            "where s.kind = 'evaluate' and a.path like '%metrics.json'").fetchone()
        (pgt_dir,) = db.execute("select output_dir from stages where kind = 'pseudo_gt'").fetchone()
        result = load_evaluation(metrics_path)
        reports = {m.method: {"dataset": m.values} for m in result.dataset}

        dataset = load_dataset(Path(dataset_root))
        test_ids = {r.video_id for r in dataset.test}
        pred = Path(tmp) / "pseudo_gt_pred"
        pseudo_gt_as_predictions(Path(pgt_dir), test_ids, pred)
        pgt_report = evaluate_folder(pred, Path(dataset_root) / "annotations", name="pseudo-GT")

        print(f"preset {args.preset}: {args.classes} classes x {args.videos_per_class} videos x "
              f"{args.seconds} s, test split {len(test_ids)} videos; wall time {wall:.0f} s\n")
        print(f"{'method':<12}" + "".join(f"{m:>8}" for m in ("cc", "nss", "sim", "kld", "auc_j", "sauc")))
        for name, data in (("STA", reports["sta"]["dataset"]), ("centre bias", reports["centre"]["dataset"]),
                           ("pseudo-GT", pgt_report.dataset)):
            print(f"{name:<12}" + "".join(f"{data[m]:>8.3f}" for m in ("cc", "nss", "sim", "kld", "auc_j", "sauc")))
        sta_cc, centre_cc = reports["sta"]["dataset"]["cc"], reports["centre"]["dataset"]["cc"]
        print(f"\nSTA / centre-bias CC ratio: {sta_cc / centre_cc:.2f} (target >= 2)")
        print(f"pseudo-GT frames scored: {pgt_report.frames} (seconds no branch selected have none)\n")
        print(format_table([pgt_report], per_video=False))
        print("\nstage wall times (s):")
        for kind, seconds in stage_times(db):
            print(f"  {kind:<16} {seconds:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
