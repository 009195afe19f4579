"""The paper's benchmark table: STA predicted on every frame of the STAViS sets and scored with
the STAViS protocol, beside the centre-bias baseline and STANet's published numbers.

Layout under ``root`` (STAViS): ``video_frames/<DB>/<video>/img_%05d.jpg``,
``video_audio/<DB>/<video>/<video>.wav``, ``annotations/<DB>/<video>/{maps/eyeMap_%05d.jpg,
fixMap_%05d.mat}``, ``fold_lists/<DB>_list_test_<split>_fps.txt``. The fold lists give each
video's frame rate and which videos are test videos (the union of the test folds; for AVAD,
Coutrot, ETMD and SumMe the three folds cover the set). Without fold lists every video is
scored at the rate given by ``fps``.

Writes ``out/<DB>/predictions/``, ``out/<DB>/metrics.json|csv`` and ``out/benchmark.json``,
``benchmark.csv``, ``benchmark.md``.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sta_models.callbacks import NO_CALLBACKS, Callbacks
from sta_models.clips import FrameRates, list_frame_folders, read_fold_list
from sta_models.config import EvaluateConfig
from sta_models.jsonio import write_json_atomic
from sta_models.metric_table import label

TABLE_METRICS = ("auc_j", "sim", "sauc", "cc", "nss")  # the paper's column order (metric_table names)
METRIC_LABELS = {m: label(m) for m in TABLE_METRICS}
SETS = ("AVAD", "DIEM", "SumMe", "ETMD", "Coutrot1", "Coutrot2")
FOLDERS = {"AVAD": "AVAD", "DIEM": "DIEM", "SumMe": "SumMe", "ETMD": "ETMD_av", "Coutrot1": "Coutrot_db1",
           "Coutrot2": "Coutrot_db2"}
PUBLISHED_SOURCE = "Wang et al., CVPR 2021, weakly supervised STANet (as quoted in SPEC §7)"
_P = dict(zip(TABLE_METRICS, range(5), strict=True))  # the published values below are in this order
PUBLISHED_STANET: dict[str, dict[str, float]] = {
    name: {m: vals[i] for m, i in _P.items()}
    for name, vals in {
        "AVAD": (0.873, 0.334, 0.580, 0.438, 2.018),
        "DIEM": (0.861, 0.391, 0.658, 0.469, 1.716),
        "SumMe": (0.854, 0.294, 0.627, 0.368, 1.647),
        "ETMD": (0.908, 0.318, 0.682, 0.448, 2.176),
        "Coutrot1": (0.829, 0.306, 0.542, 0.339, 1.376),
        "Coutrot2": (0.850, 0.247, 0.597, 0.273, 1.475),
    }.items()
}


class BenchmarkError(ValueError):
    """A benchmark that cannot run as asked; ``str()`` is one line."""


@dataclass
class TableRow:
    method: str  # "sta", "centre", "published"
    label: str
    values: dict[str, dict[str, float | None]]  # set → metric → value (None: not available)
    source: str = ""


@dataclass
class BenchmarkTable:
    """The paper's table (rows: methods; columns: set × metric) and how each set was run."""

    sets: list[str]
    rows: list[TableRow]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # set → fps source, videos, frame counts

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": 1, "metrics": list(TABLE_METRICS), "labels": METRIC_LABELS, "sets": self.sets,
                "rows": [{"method": r.method, "label": r.label, "source": r.source, "values": r.values}
                         for r in self.rows],
                "runs": self.runs}

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["set", "method", *[METRIC_LABELS[m] for m in TABLE_METRICS]])
        for s in self.sets:
            for r in self.rows:
                w.writerow([s, r.label, *[_cell(r.values.get(s, {}).get(m)) for m in TABLE_METRICS]])
        return buf.getvalue()

    def markdown(self) -> str:
        head = ["method", *[f"{s} {METRIC_LABELS[m]}" for s in self.sets for m in TABLE_METRICS]]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        for r in self.rows:
            cells = [_cell(r.values.get(s, {}).get(m)) for s in self.sets for m in TABLE_METRICS]
            lines.append("| " + " | ".join([r.label, *cells]) + " |")
        lines.append("")
        lines.append(f"n/a: not available. Published row: {PUBLISHED_SOURCE}. All metrics: higher is better.")
        return "\n".join(lines)

    def text(self) -> str:
        """Per set, one line per method: what ``stapipe benchmark`` prints."""
        head = f"{'set':<10} {'method':<20} " + " ".join(f"{METRIC_LABELS[m]:>7}" for m in TABLE_METRICS)
        out = [head, "-" * len(head)]
        for s in self.sets:
            for r in self.rows:
                out.append(f"{s[:10]:<10} {r.label[:20]:<20} "
                           + " ".join(f"{_cell(r.values.get(s, {}).get(m)):>7}" for m in TABLE_METRICS))
        return "\n".join(out)

    def write(self, out_dir: Path) -> dict[str, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"json": out_dir / "benchmark.json", "csv": out_dir / "benchmark.csv", "md": out_dir / "benchmark.md"}
        write_json_atomic(paths["json"], self.to_dict())
        paths["csv"].write_text(self.csv_text())
        paths["md"].write_text(self.markdown() + "\n")
        return paths


def _cell(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.3f}"


def published_row(sets: Sequence[str]) -> TableRow:
    """STANet's published numbers for ``sets``; a set without one is None ("n/a"), never invented."""
    return TableRow("published", "STANet (published)", {s: dict(PUBLISHED_STANET.get(s, dict.fromkeys(TABLE_METRICS)))
                                                        for s in sets}, source=PUBLISHED_SOURCE)


def set_folder(name: str) -> tuple[str, str]:
    """(table name, STAViS folder name) for ``AVAD``, ``etmd``, ``ETMD_av``, ``Coutrot_db1``, … or any folder."""
    for canon, folder in FOLDERS.items():
        if name.lower() in (canon.lower(), folder.lower()):
            return canon, folder
    return name, name


def available_sets(root: Path) -> list[str]:
    """The published sets present under ``root/video_frames`` (in the paper's order)."""
    frames = root / "video_frames"
    return [s for s in SETS if (frames / FOLDERS[s]).is_dir()]


def fold_list_videos(root: Path, folder: str) -> tuple[FrameRates, set[str] | None, str]:
    """Frame rates and test videos of one set from its fold lists, and where they came from."""
    lists = sorted((root / "fold_lists").glob(f"{folder}_list_test_*_fps.txt"))
    if not lists:
        return FrameRates(), None, "none"
    rates: dict[str, float] = {}
    for f in lists:
        rates.update(read_fold_list(f))
    return FrameRates(per_video=rates, source=", ".join(f"fold_lists/{f.name}" for f in lists)), set(rates), \
        "fold lists"


def run_benchmark(checkpoint: str | Path, root: str | Path, out_dir: str | Path, sets: Sequence[str] | None = None,
                  *, fps: float | None = None, device: str = "auto", batch_size: int = 8,
                  cfg: EvaluateConfig | None = None, allow_missing: bool = False, overlay: bool = False,
                  pred_root: str | Path | None = None, callbacks: Callbacks = NO_CALLBACKS) -> BenchmarkTable:
    """Predict every frame of each set, evaluate against its GT, and write the table (module
    docstring); ``pred_root/<DB>`` instead of ``out_dir/<DB>/predictions`` when given."""
    from sta_models.evaluation import check_coverage, evaluate_baseline, evaluate_folder, write_reports
    from sta_models.predict import predict_videos

    root, out_dir = Path(root), Path(out_dir)
    cfg = cfg or EvaluateConfig()
    if not (root / "video_frames").is_dir():
        raise BenchmarkError(f"{root} is not a STAViS root (no video_frames/ folder)")
    names = list(sets) if sets else available_sets(root)
    if not names:
        raise BenchmarkError(f"none of {', '.join(SETS)} under {root / 'video_frames'}; name sets with --db")
    chosen = [set_folder(n) for n in names]
    for canon, folder in chosen:
        for sub in ("video_frames", "annotations"):
            if not (root / sub / folder).is_dir():
                raise BenchmarkError(f"{canon}: {root / sub / folder} not found")
    sta = TableRow("sta", "STA (ours)", {}, source=str(checkpoint))
    centre = TableRow("centre", "centre bias", {}, source="centred Gaussian, σ = 1/4 of each side")
    runs: dict[str, dict[str, Any]] = {}
    for n, (canon, folder) in enumerate(chosen):
        callbacks.check_cancel()
        callbacks.on_progress(n, len(chosen), f"benchmark {canon}")
        rates, tests, how = fold_list_videos(root, folder)
        if fps is not None:
            rates = FrameRates(default=fps, per_video=rates.per_video, source=rates.source if tests else f"--fps {fps:g}")
        elif tests is None:
            raise BenchmarkError(f"{canon}: no fold lists ({root / 'fold_lists' / folder}_list_test_*_fps.txt) to give "
                                 "the frame rates; pass --fps")
        folders = [p for p in list_frame_folders(root / "video_frames" / folder) if tests is None or p.name in tests]
        if not folders:
            raise BenchmarkError(f"{canon}: no test video's frame folder under {root / 'video_frames' / folder}")
        pred_dir = Path(pred_root) / canon if pred_root is not None else out_dir / canon / "predictions"
        with tempfile.TemporaryDirectory(prefix="stapipe-bench-") as tmp:
            for p in folders:
                (Path(tmp) / p.name).symlink_to(p.resolve())
            results = predict_videos(checkpoint, tmp, pred_dir, device=device, overlay=overlay, batch_size=batch_size,
                                     every_frame=True, audio_dir=root / "video_audio" / folder, fps=rates,
                                     callbacks=callbacks)
        failed = {r.video_id: r.error for r in results if not r.ok}
        gt = root / "annotations" / folder
        cov = check_coverage(pred_dir, gt)
        scored = [v for v in cov.scored_videos if tests is None or v in tests]
        gaps = {v: m for v, m in cov.missing.items() if v in scored}
        unpredicted = [v for v in cov.gt_videos if v not in cov.scored_videos and (tests is None or v in tests)]
        if (gaps or unpredicted) and not allow_missing:
            detail = "; ".join(f"{v}: {e}" for v, e in list(failed.items())[:3])
            raise BenchmarkError(f"{canon}: predictions miss GT frames of {len(gaps) + len(unpredicted)} video(s)"
                                 f"{' (' + detail + ')' if detail else ''}; fix them or pass --allow-missing")
        ours = evaluate_folder(pred_dir, gt, cfg=cfg, callbacks=callbacks, name="sta")
        base = evaluate_baseline(gt, "centre", videos=[v.video for v in ours.videos], cfg=cfg, callbacks=callbacks)
        write_reports([ours, base], out_dir / canon / "metrics.json", out_dir / canon / "metrics.csv", config=cfg)
        sta.values[canon] = {m: _finite(ours.dataset[m]) for m in TABLE_METRICS}
        centre.values[canon] = {m: _finite(base.dataset[m]) for m in TABLE_METRICS}
        runs[canon] = {"folder": folder, "videos": len(ours.videos), "frames_scored": ours.frames,
                       "frames_missing": ours.missing_frames, "frames_nan": ours.nan_frames,
                       "fps_source": rates.source,
                       "test_videos_from": how, "prediction_failures": failed,
                       "silent_videos": sorted(r.video_id for r in results if r.ok and (r.audio_note or "")
                                               .startswith("silent"))}
        callbacks.on_progress(n + 1, len(chosen), f"benchmark {canon}")
    table = BenchmarkTable(sets=[c for c, _ in chosen], rows=[sta, centre, published_row([c for c, _ in chosen])],
                           runs=runs)
    table.write(out_dir)
    return table


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 6)
