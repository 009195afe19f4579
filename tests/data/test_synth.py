"""Synthetic AVE-like datasets (SPEC §8): layout, splits, round trip through the extractor, true saliency."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from scipy.io import loadmat

from sta_models.ave import CATEGORIES, load_dataset
from sta_models.synth import class_look, class_tone, generate


def _digest(root: Path) -> dict[str, str]:
    """Content hash of every file (a MAT file's header carries its creation time: hash its array)."""
    def content(p: Path) -> bytes:
        return loadmat(p)["eyeMap"].tobytes() if p.suffix == ".mat" else p.read_bytes()

    return {str(p.relative_to(root)): hashlib.sha256(content(p)).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_splits(synth_root):
    ds = load_dataset(synth_root)
    assert not ds.problems
    assert len(ds.rows) == 12 and (len(ds.train), len(ds.val), len(ds.test)) == (6, 3, 3)
    for name in ("train", "val", "test"):
        assert {r.category for r in getattr(ds, name)} == set(CATEGORIES[:3])
    assert all(len(r.seconds) >= 3 for r in ds.rows)
    assert any(len(r.seconds) < 4 for r in ds.rows) and sum(len(r.seconds) == 4 for r in ds.rows) >= 8
    for row in ds.rows:
        gt = synth_root / "annotations" / row.video_id
        assert sorted(p.name for p in (gt / "maps").iterdir()) == [f"eyeMap_{k:05d}.jpg" for k in range(1, 5)]
        assert sorted(p.name for p in gt.glob("fixMap_*.mat")) == [f"fixMap_{k:05d}.mat" for k in range(1, 5)]


def test_round_trip_through_extractor_and_truth_on_the_sounding_object(synth_root, synth_features):
    ds = load_dataset(synth_root)
    for row in ds.rows:
        with h5py.File(synth_features / f"{row.video_id}.h5", "r") as h5:
            frames, audio, valid = h5["frames"][()], h5["audio"][()], h5["audio_valid"][()]
            assert (h5.attrs["width"], h5.attrs["height"]) == (128, 96)
        assert frames.shape == (4, 112, 112, 3) and valid.all()
        tone_bin = int(round(class_tone(row.category_id) / 100))
        loudness = audio.mean(axis=2)[:, tone_bin]
        inside = np.array([k in row.seconds for k in range(4)])
        assert (audio.mean(axis=2)[inside].argmax(axis=1) == tone_bin).all()
        if (~inside).any():
            assert loudness[~inside].max() < loudness[inside].min() - 1.0
        _, colour = class_look(row.category_id)
        gt = synth_root / "annotations" / row.video_id
        for k in range(4):
            eye = cv2.imread(str(gt / "maps" / f"eyeMap_{k + 1:05d}.jpg"), cv2.IMREAD_GRAYSCALE)
            fix = loadmat(gt / f"fixMap_{k + 1:05d}.mat")["eyeMap"]
            assert eye.shape == fix.shape == (96, 128) and set(np.unique(fix)) == {0, 1}
            y, x = np.unravel_index(eye.argmax(), eye.shape)
            # The stored frame is squashed to 112x112: the map's peak lands on the class colour.
            pixel = frames[k, int(y * 112 / 96), int(x * 112 / 128)].astype(int)
            assert np.abs(pixel - np.array(colour)).max() < 40, (row.key, k, pixel, colour)
            fy, fx = np.nonzero(fix)
            assert np.hypot(fy - y, fx - x).mean() < 15  # fixations cluster on the object
            assert eye[fy, fx].mean() > 3 * eye.mean()


def test_deterministic_for_a_seed(tmp_path):
    kwargs = {"classes": 2, "videos_per_class": 3, "seconds": 2, "size": (64, 48)}
    a = _digest(generate(tmp_path / "a", seed=5, **kwargs))
    b = _digest(generate(tmp_path / "b", seed=5, **kwargs))
    c = _digest(generate(tmp_path / "c", seed=6, **kwargs))
    assert a == b
    assert len(a) == 4 + 6 + 6 * 2 * 2  # split files, videos, two maps per second
    assert a["annotations/syn005c00v000/maps/eyeMap_00001.jpg"] != c.get("annotations/syn006c00v000/maps/eyeMap_00001.jpg")


@pytest.mark.parametrize("bad", [{"classes": 0}, {"classes": 29}, {"videos_per_class": 2}, {"size": (63, 48)}])
def test_rejects_bad_arguments(tmp_path, bad):
    with pytest.raises(ValueError):
        generate(tmp_path, **bad)


def test_classes_look_and_sound_different():
    looks = {class_look(c) for c in range(28)}
    tones = [class_tone(c) for c in range(28)]
    assert len(looks) == 28 and max(tones) < 8000 and min(np.diff(tones)) >= 200
