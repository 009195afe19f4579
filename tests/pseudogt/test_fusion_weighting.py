"""Contrast-weighted CAM fusion for from-scratch runs (#18): a peaked CAM outweighs a broad one
that the class probability alone would let win; SPEC §5's probability weights stay the default."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from sta_models import pseudogt as P
from sta_models.ave import AnnotationRow
from sta_models.config import PseudoGTConfig
from sta_models.fusion_weights import CONTRAST, PROBABILITY, branch_weight, cam_contrast, resolve_weighting

ROW = AnnotationRow(category="Bark", category_id=2, video_id="vid", start=1, end=4, line=2)
H = W = 64
BOX = [16, 8, 32, 32]  # where S's CAM (and the object) is


def _cam_file(path: Path, cams: np.ndarray, seconds: list[int], true_prob: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["cams"] = cams.astype(np.float16)
        f["seconds"] = np.asarray(seconds)
        f["pred_class"] = np.full(len(seconds), ROW.category_id)
        f["pred_prob"] = np.asarray(true_prob, np.float32)
        f["true_prob"] = np.asarray(true_prob, np.float32)


def test_contrast_is_zero_for_flat_maps_and_ignores_scale() -> None:
    assert cam_contrast(np.zeros((8, 8), np.float32)) == 0.0
    assert cam_contrast(np.full((8, 8), 0.3, np.float32)) == 0.0
    peaked = np.zeros((8, 8), np.float32)
    peaked[2:4, 2:4] = 1.0  # 4 of 64 pixels: max/mean = 16
    assert cam_contrast(peaked) == pytest.approx(15.0)
    assert cam_contrast(5 * peaked) == pytest.approx(15.0)
    assert branch_weight(0.5, peaked, PROBABILITY) == 0.5
    assert branch_weight(0.5, peaked, CONTRAST) == pytest.approx(7.5)
    with pytest.raises(ValueError, match="unknown fusion weighting"):
        branch_weight(0.5, peaked, "votes")


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    """S: a sharp CAM on the object, p 0.6; SA: a broad CAM brighter on the right, p 0.9 — the
    measured from-scratch pattern (SA/ST classify well, their CAMs do not find the object)."""
    feat = tmp_path / "features"
    feat.mkdir()
    with h5py.File(feat / "vid.h5", "w") as f:
        f["frames"] = np.zeros((5, H, W, 3), np.uint8)
        f["audio"] = np.zeros((5, 81, 199), np.float32)
        f["audio_valid"] = np.ones(5, bool)
        f.attrs["video_id"] = "vid"
        f.attrs["fps"] = 25.0
    sharp = np.zeros((3, H, W), np.float32)
    sharp[:, 16:32, 8:32] = 1.0
    broad = np.full((3, H, W), 0.7, np.float32)
    broad[:, :, 48:] = 1.0
    dirs = {b: tmp_path / f"cams_{b}" for b in ("s", "sa", "st")}
    _cam_file(dirs["s"] / f"{ROW.key}.h5", sharp, [1, 2, 3], [0.6] * 3)
    _cam_file(dirs["sa"] / f"{ROW.key}.h5", broad, [1, 2, 3], [0.9] * 3)
    return {"features": feat, **dirs}


@pytest.mark.parametrize("weighting", [PROBABILITY, CONTRAST])
def test_contrast_weights_keep_the_box_on_the_peaked_cam(inputs: dict[str, Path], tmp_path: Path,
                                                          weighting: str) -> None:
    cams = {b: inputs[b] for b in ("s", "sa", "st")}
    out = tmp_path / f"crops_{weighting}"
    summary = P.coarse_boxes_and_crops(cams, [ROW], inputs["features"], out, PseudoGTConfig(min_box=8),
                                       weighting=weighting)
    assert summary["fusion_weighting"] == weighting
    assert json.loads((out / "crops.json").read_text())["fusion_weighting"] == weighting
    with h5py.File(out / f"{ROW.key}.h5", "r") as f:
        boxes = f["boxes"][()][1:4]
    if weighting == CONTRAST:  # S 0.6 × 9.7 against SA 0.9 × 0.33: the box is S's object
        np.testing.assert_array_equal(boxes, [BOX] * 3)
    else:  # SPEC §5: SA's bright strip (weight 0.9 > 0.6) pulls the box to the right edge
        assert (boxes[:, 3] == W).all()


def test_fine_weights_read_the_crop_cam_not_the_pasted_one(inputs: dict[str, Path], tmp_path: Path) -> None:
    """A fine CAM's contrast is its own: pasting into a small box must not make it look peaked."""
    cfg = PseudoGTConfig(min_box=8, smooth_window=1, sparsify_factor=0.0)
    crops = tmp_path / "crops"
    P.coarse_boxes_and_crops({b: inputs[b] for b in ("s", "sa", "st")}, [ROW], inputs["features"], crops, cfg,
                             weighting=CONTRAST)
    left = np.zeros((3, 32, 32), np.float32)
    left[..., :16] = 1.0  # contrast 1
    right = np.full((3, 32, 32), 0.9, np.float32)
    right[..., 16:] = 1.0  # contrast 1/0.95 − 1 ≈ 0.053
    fine = {b: tmp_path / f"fine_{b}" for b in ("s", "sa", "st")}
    _cam_file(fine["s"] / f"{ROW.key}.h5", left, [1, 2, 3], [0.5] * 3)
    _cam_file(fine["sa"] / f"{ROW.key}.h5", right, [1, 2, 3], [0.5] * 3)
    res = P.fuse_pseudo_gt(fine, crops, [ROW], tmp_path / "pgt", cfg, weighting=CONTRAST)
    assert res["fusion_weighting"] == CONTRAST
    with h5py.File(tmp_path / "pgt" / f"{ROW.key}.h5", "r") as f:
        maps = f["maps"][()].astype(np.float32)
    y0, x0, y1, x1 = BOX
    mid = (x0 + x1) // 2
    # F ∝ 0.5·1·left/1 + 0.5·0.053·(right − 0.9)/0.1: left half 1, right half 0.053/1.053 after min-max
    np.testing.assert_allclose(maps[:, y0:y1, x0:mid], 1.0, atol=2e-3)
    np.testing.assert_allclose(maps[:, y0:y1, mid:x1], 0.0526 / 1.0526, atol=5e-3)


def test_auto_weighting_follows_the_training_records(tmp_path: Path) -> None:
    pretrained, scratch = tmp_path / "a.json", tmp_path / "b.json"
    pretrained.write_text(json.dumps({"random_init": []}))
    scratch.write_text(json.dumps({"random_init": ["audio", "backbone"]}))
    assert resolve_weighting("auto", [pretrained, pretrained]) == PROBABILITY
    assert resolve_weighting("auto", [pretrained, scratch]) == CONTRAST
    assert resolve_weighting("auto", [tmp_path / "missing.json"]) == PROBABILITY
    assert resolve_weighting(PROBABILITY, [scratch]) == PROBABILITY
    assert PseudoGTConfig().fusion_weighting == "auto"


def test_ablation_fuses_as_the_stages_recorded(inputs: dict[str, Path], tmp_path: Path) -> None:
    """The ablation's fusion rows read the weighting the crops / pseudo-GT stages wrote down, so
    they score the fusion the pipeline used (and SPEC §5's for outputs from before the choice)."""
    from sta_models.ablation import AblationInputs, recorded_weighting, row_maps
    from sta_models.cam_files import read_cam_file

    cfg = PseudoGTConfig(min_box=8)
    cams = {b: inputs[b] for b in ("s", "sa", "st")}
    crops, pgt = tmp_path / "crops", tmp_path / "pgt"
    P.coarse_boxes_and_crops(cams, [ROW], inputs["features"], crops, cfg, weighting=CONTRAST)
    P.fuse_pseudo_gt(cams, crops, [ROW], pgt, cfg)  # the coarse CAMs stand in for fine ones: probability
    assert recorded_weighting(crops / "crops.json") == CONTRAST
    assert recorded_weighting(pgt / "report.json") == PROBABILITY
    assert recorded_weighting(tmp_path / "absent.json") == PROBABILITY
    got = {}
    layout = tmp_path / "cams"  # the pipeline's <branch>/<row key>.h5 layout
    for b in ("s", "sa"):
        (layout / b).mkdir(parents=True)
        (layout / b / f"{ROW.key}.h5").write_bytes((inputs[b] / f"{ROW.key}.h5").read_bytes())
    for weighting in (PROBABILITY, CONTRAST):
        maps = row_maps(ROW, AblationInputs(cams_coarse=layout, crops=crops, cams_fine=layout, pseudo_gt=pgt,
                                            weighting_coarse=weighting))
        got[weighting] = maps[2]["fusion_coarse"]
    s_cam, sa_cam = (read_cam_file(layout / b / f"{ROW.key}.h5").cams[1].astype(np.float32) for b in ("s", "sa"))
    want = P.fuse_frame([s_cam, sa_cam], [0.6 * cam_contrast(s_cam), 0.9 * cam_contrast(sa_cam)],
                        np.empty((H, W), np.float32))
    np.testing.assert_allclose(got[CONTRAST], want, atol=1e-6)
    assert got[PROBABILITY][0, W - 1] == pytest.approx(1.0)  # SPEC: SA's strip is the maximum
    assert got[CONTRAST][0, W - 1] < 0.1
