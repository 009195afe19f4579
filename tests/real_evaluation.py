"""A real evaluate-stage output on the synthetic dataset, for the evaluation and dashboard tests.

Everything is the pipeline's own code — extraction, the crops and pseudo-GT stages, STA training
and prediction (with overlays), :func:`sta_models.evaluation_stage.score_predictions` — except the
branch classifiers: training S/SA/ST to useful CAMs takes minutes, so their CAM files are written
by the real writer (:func:`sta_models.cam_files.write_cam_file`) from the true saliency, degraded
per branch (S sharp, SA blurred, ST displaced and not selecting every second). The ablation then
has a known order: S beats SA and ST, the fusions and the pseudo-GT are close to S.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sta_models.ablation import AblationInputs
from sta_models.ave import load_dataset
from sta_models.cam_files import write_cam_file
from sta_models.config import EvaluateConfig, PseudoGTConfig, TrainConfig
from sta_models.crop_files import read_boxes
from sta_models.evaluation import list_ground_truth
from sta_models.evaluation_stage import Scored, score_predictions
from sta_models.imageio_utils import read_map
from sta_models.pseudogt import coarse_boxes_and_crops, fuse_pseudo_gt

CANVAS = 56


@dataclass
class RealEvaluation:
    root: Path  # the pipeline folder: <stage kind>/ like a real run's
    evaluate_dir: Path
    dataset_root: Path
    scored: Scored


def _oracle(branch: str, gt: np.ndarray, second: int) -> tuple[np.ndarray, bool]:
    """(CAM at the canvas size, selected) of ``branch`` from the true saliency map."""
    m = cv2.resize(gt.astype(np.float32), (CANVAS, CANVAS), interpolation=cv2.INTER_AREA)
    if branch == "sa":
        m = cv2.GaussianBlur(m, (0, 0), 6) + 0.15 * m.max()
    elif branch == "st":
        m = np.roll(m, (CANVAS // 5, CANVAS // 4), axis=(0, 1))
    m = np.clip(m, 0, None)
    return m / (m.max() + 1e-8), branch != "st" or second % 2 == 0


def _write_cams(rows: list, gt: dict, frame_crop: dict | None, out: Path) -> None:
    for branch in ("s", "sa", "st"):
        for row in rows:
            frames = gt.get(row.video_id, {})
            data: dict[str, list] = {k: [] for k in ("cams", "seconds", "pred_class", "pred_prob", "true_prob")}
            for s in row.seconds:
                if s + 1 not in frames:
                    continue
                truth = read_map(frames[s + 1][0])
                if frame_crop is not None:  # fine: the truth inside the crop box, at the frame size first
                    size, boxes = frame_crop[row.key]
                    y0, x0, y1, x1 = (int(v) for v in boxes[s])
                    truth = cv2.resize(truth.astype(np.float32), (size[1], size[0]))[y0:y1, x0:x1]
                cam, selected = _oracle(branch, truth, s)
                data["cams"].append(cam)
                data["seconds"].append(s)
                data["pred_class"].append(row.category_id if selected else (row.category_id + 1) % 28)
                data["pred_prob"].append(0.9)
                data["true_prob"].append({"s": 0.9, "sa": 0.7, "st": 0.5}[branch] if selected else 0.1)
            (out / branch).mkdir(parents=True, exist_ok=True)
            write_cam_file(out / branch / f"{row.key}.h5", data, {"branch": branch, "canvas": CANVAS})


def make_real_evaluation(dataset_root: Path, feature_dir: Path, root: Path) -> RealEvaluation:
    """Run crops → pseudo-GT → STA (1 epoch) → predict → evaluate under ``root``."""
    from sta_models.predict import predict_videos
    from sta_models.sta_training import train_sta

    dataset = load_dataset(dataset_root)
    rows = list(dataset.train) + list(dataset.val) + list(dataset.test)
    gt_dir = dataset_root / "annotations"
    gt = list_ground_truth(gt_dir)
    dirs = {k: root / k for k in ("cams_coarse", "crops", "cams_fine", "pseudo_gt", "train_sta", "evaluate")}
    pcfg = PseudoGTConfig(min_box=16)
    _write_cams(rows, gt, None, dirs["cams_coarse"])
    coarse_boxes_and_crops({b: dirs["cams_coarse"] / b for b in ("s", "sa", "st")}, rows, feature_dir,
                           dirs["crops"], pcfg)
    crops = {}
    for row in rows:
        crops[row.key] = read_boxes(dirs["crops"] / f"{row.key}.h5")
    _write_cams(rows, gt, crops, dirs["cams_fine"])
    fuse_pseudo_gt({b: dirs["cams_fine"] / b for b in ("s", "sa", "st")}, dirs["crops"], rows, dirs["pseudo_gt"],
                   pcfg)
    tcfg = TrainConfig(backbone="resnet18", input_size=64, epochs=1, batch_size=8, lr=1e-2, decay_epochs=[5],
                       weight_decay=1e-4, workers=0, device="cpu", seed=0)
    train_sta({"train": dataset.train, "val": dataset.val}, feature_dir, dirs["pseudo_gt"], dirs["train_sta"], tcfg,
              channels=8, use_cache=False)
    test_ids = sorted({r.video_id for r in dataset.test})
    inputs = root / "test_inputs"
    inputs.mkdir()
    for vid in test_ids:
        (inputs / f"{vid}.h5").symlink_to(feature_dir / f"{vid}.h5")
    pred_dir = dirs["evaluate"] / "predictions"
    predict_videos(dirs["train_sta"] / "best.pt", inputs, pred_dir, device="cpu", overlay=True)
    ablation = AblationInputs(dirs["cams_coarse"], dirs["crops"], dirs["cams_fine"], dirs["pseudo_gt"], pred_dir)
    scored = score_predictions(pred_dir, gt_dir, dirs["evaluate"], feature_dir=feature_dir, test_rows=dataset.test,
                               ablation_inputs=ablation, videos=test_ids, cfg=EvaluateConfig(n_splits=10))
    return RealEvaluation(root, dirs["evaluate"], dataset_root, scored)
