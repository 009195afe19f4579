"""Class activation maps of a trained branch (SPEC §4), one HDF5 file per annotation row.

For every event second, in eval mode and without augmentation: CAM = relu((map1 + map2) / 2) at
the true class, bilinearly resized to ``canvas``×``canvas``, divided by its max (+1e-8), with the
frame's predicted class, its probability and the true class's probability. The file keeps the map
at the class-map size and the reader does the resize (``sta_models.cam_files``). A
frame is *selected* for the branch when its top-1 class is the true class (pseudo-GT fusion uses
that). A branch needs an event of at least its ``min_event_s`` (ST: 3 s, ``sta_models.branches``):
shorter rows get no file for it and the summary says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from sta_models.branches import get_branch
from sta_models.callbacks import NO_CALLBACKS, Callbacks
from sta_models.cam_files import normalise_native, upsample, write_cam_file
from sta_models.datasets import FeatureDataset, prepare_batch
from sta_models.networks.branches import run_branch
from sta_models.trainer import autocast_for, load_checkpoint, resolve_device, to_channels_last
from sta_models.training import load_branch

PREVIEWS_PER_ROW = 3
PREVIEW_ROWS = 32  # rows that get previews: a sample for the dashboard (3 PNGs × 4,143 rows would be ~3 GB)


@dataclass
class CamSummary:
    """What :func:`compute_cams` did; ``as_dict()`` is what ``summary.json`` holds."""

    branch: str
    out_dir: str
    canvas: int
    rows_written: int = 0
    frames: int = 0
    selected: int = 0
    skipped_rows: dict[str, str] = field(default_factory=dict)  # row key -> reason
    excluded: dict[str, int] = field(default_factory=dict)
    previews: int = 0

    @property
    def accuracy(self) -> float:
        return self.selected / self.frames if self.frames else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy": self.accuracy}


def true_class_map(cam: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] CAMs → [B, h, w] float32: each sample's true-class channel at the class-map size."""
    idx = labels.view(-1, 1, 1, 1).expand(-1, 1, *cam.shape[-2:])
    return cam.float().gather(1, idx)[:, 0]


def heatmap_overlay(frame: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """BGR uint8 preview: the JET-coloured CAM blended over the (RGB) frame at the CAM's size."""
    size = cam.shape[::-1]
    bgr = cv2.cvtColor(cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR), cv2.COLOR_RGB2BGR)
    heat = cv2.applyColorMap(np.clip(cam * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(heat, alpha, bgr, 1.0 - alpha, 0.0)


def compute_cams(branch: str, checkpoint: str | Path, rows: Sequence[Any], feature_dir: str | Path,
                 out_dir: str | Path, *, canvas: int, device: str = "auto", batch_size: int = 16,
                 callbacks: Callbacks = NO_CALLBACKS, input_size: int | None = None, workers: int = 0,
                 previews_per_row: int = PREVIEWS_PER_ROW, preview_rows: int = PREVIEW_ROWS) -> CamSummary:
    """Write ``out_dir/<row.key>.h5`` per row, ``previews/*.png`` (of the first ``preview_rows`` rows) and ``summary.json``.

    ``input_size`` defaults to the size the checkpoint was trained at.
    """
    spec = get_branch(branch)
    out_dir = Path(out_dir)
    (out_dir / "previews").mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint)
    if ckpt["meta"].get("branch") != branch:
        raise ValueError(f"{checkpoint} holds branch {ckpt['meta'].get('branch')!r}, not {branch!r}")
    model = load_branch(ckpt, dev)
    if dev.type == "cuda":
        to_channels_last(model)
    size = input_size or int(ckpt["meta"]["input_size"])
    ds = FeatureDataset(rows, feature_dir, branch, size, train=False, skip_invalid_audio=False)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=dev.type == "cuda")
    summary = CamSummary(branch=branch, out_dir=str(out_dir), canvas=canvas, excluded=ds.exclusions())
    present = {i for i, _ in ds.samples}
    for i, row in enumerate(ds.rows):
        if i not in present:
            reason = (f"event shorter than {spec.min_event_s} s (no {spec.label} CAM)"
                      if row.end - row.start < spec.min_event_s
                      else "no feature file" if not (Path(ds.paths[i]).exists() and Path(ds.sources[i]).exists())
                      else "no usable seconds")
            summary.skipped_rows[row.key] = reason

    pending: dict[str, list] = {}
    current = -1

    def flush(i: int) -> None:
        row = ds.rows[i]
        attrs = {"branch": branch, "key": row.key, "video_id": row.video_id,
                 "category_id": int(row.category_id), "canvas": canvas, "checkpoint": str(checkpoint)}
        write_cam_file(out_dir / f"{row.key}.h5", pending, attrs)
        summary.rows_written += 1
        if summary.rows_written > preview_rows or previews_per_row <= 0:
            return
        n = len(pending["seconds"])
        picks = sorted(set(np.linspace(0, n - 1, min(previews_per_row, n)).round().astype(int).tolist()))
        frames = ds.frames_at(i, [pending["seconds"][p] for p in picks])  # the crops, for fine CAMs
        native, _ = normalise_native(np.stack([pending["cams"][p] for p in picks]), canvas)
        for p, m, frame in zip(picks, native, frames, strict=True):
            k = pending["seconds"][p]
            img = heatmap_overlay(frame, upsample(m, canvas))
            cv2.imwrite(str(out_dir / "previews" / f"{row.key}_{k:03d}.png"), img)
            summary.previews += 1

    total = len(loader)
    with torch.no_grad():
        for b, raw in enumerate(loader):
            callbacks.check_cancel()
            batch = prepare_batch(raw, dev)
            with autocast_for(dev):
                out = run_branch(model, batch)
            labels = batch["label"]
            cams = true_class_map(out.cam(), labels).cpu().numpy()
            probs = torch.softmax(out.prediction().float(), dim=1)
            pred = probs.argmax(1)
            pred_prob = probs.gather(1, pred[:, None])[:, 0].cpu().numpy()
            true_prob = probs.gather(1, labels[:, None])[:, 0].cpu().numpy()
            pred_np = pred.cpu().numpy()
            labels_np = labels.cpu().numpy()
            for j, (i, k) in enumerate(zip(raw["row"].tolist(), raw["second"].tolist(), strict=True)):
                if i != current:
                    if current >= 0:
                        flush(current)
                    current = i
                    pending = {"cams": [], "seconds": [], "pred_class": [], "pred_prob": [], "true_prob": []}
                pending["cams"].append(cams[j])
                pending["seconds"].append(k)
                pending["pred_class"].append(int(pred_np[j]))
                pending["pred_prob"].append(float(pred_prob[j]))
                pending["true_prob"].append(float(true_prob[j]))
                summary.frames += 1
                summary.selected += int(pred_np[j] == labels_np[j])
            callbacks.on_progress(b + 1, total, f"{branch} CAMs")
    if current >= 0:
        flush(current)
    tmp = out_dir / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary.as_dict(), indent=2, sort_keys=True))
    os.replace(tmp, out_dir / "summary.json")
    callbacks.log(f"{branch} CAMs: {summary.rows_written} rows, {summary.frames} frames, "
                  f"top-1 {summary.accuracy:.3f}, skipped {len(summary.skipped_rows)} rows")
    return summary
