"""The branch registry: the three SPEC branches are declared once, and one more entry is enough
for datasets, training, CAMs, the stage graph, the config and the CLI to pick a branch up."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sta_models import branches as B
from sta_models.cams import compute_cams
from sta_models.config import TrainConfig
from sta_models.datasets import FeatureDataset
from sta_models.networks.branches import BranchNet, BranchOutput, gap
from sta_models.training import train_branch
from tests.models.conftest import make_row, write_features

ROOT = Path(__file__).resolve().parents[2]
LOSS_CALLS: list[int] = []


class TinyWindowBranch(nn.Module):
    """A toy branch unlike the three: a window of three frames *and* their audio; no backbone."""

    kind = ""

    def __init__(self, backbone: str, num_classes: int, backbone_weights: object = None, *,
                 use_cache: bool = True, audio_weights: object = None) -> None:
        super().__init__()
        self.audio_weights = audio_weights
        self.cls = nn.Conv2d(9, num_classes, 3, padding=1)
        self.audio_gain = nn.Linear(3, num_classes)

    def pretrained_modules(self) -> list[nn.Module]:
        return []

    def new_modules(self) -> list[nn.Module]:
        return [self.cls, self.audio_gain]

    def logit_layers(self) -> list[nn.Module]:
        return [self.cls]

    def weights_record(self) -> dict[str, str]:
        return {}

    def forward(self, frames: torch.Tensor, audios: torch.Tensor) -> BranchOutput:
        x1 = self.cls(F.avg_pool2d(frames.flatten(1, 2), 4))
        x2 = x1 + self.audio_gain(audios.mean(dim=(2, 3, 4)))[:, :, None, None]
        return BranchOutput([gap(x1), gap(x2)], [x1, x2])


def tiny_loss(out: BranchOutput, target: torch.Tensor) -> torch.Tensor:
    LOSS_CALLS.append(int(target.shape[0]))
    return sum(F.cross_entropy(logit.float(), target) for logit in out.logits)


TINY = B.BranchSpec(name="tw", label="TW", network=TinyWindowBranch, inputs=("frames", "audios"), window=3,
                    loss=tiny_loss, min_event_s=3, paper_batch_size=8, stride=4,
                    params={"resnet18": 1, "resnet50": 1, "resnext101_32x8d": 1})


def test_the_registry_holds_the_three_branches_of_the_spec() -> None:
    specs = B.BRANCHES
    assert list(specs) == ["s", "sa", "st"]
    assert [s.needs_audio for s in specs.values()] == [False, True, False]
    assert [s.min_event_s for s in specs.values()] == [1, 1, 3]
    assert [s.scratch_recipe for s in specs.values()] == [False, True, True]
    for name, spec in specs.items():
        assert issubclass(spec.network_class(), BranchNet), name
        assert callable(spec.loss_fn()), name
    with pytest.raises(ValueError, match="unknown branch 'x'; choose one of s, sa, st"):
        B.get_branch("x")
    with pytest.raises(ValueError, match="already registered"):
        B.register_branch(specs["s"])
    with pytest.raises(ValueError, match="inputs"):
        B.BranchSpec(name="bad", label="BAD", network="m:C", inputs=("frames",))  # a window key for one frame


def test_no_branch_name_is_spelled_outside_the_registry() -> None:
    """The registry is the one place: no quoted "sa"/"st" in the library, the worker or the dashboard."""
    names = [n for n in B.BRANCHES if len(n) > 1]  # "s" alone is too common a string to scan for
    pattern = re.compile("|".join(rf"""["']{n}["']""" for n in names))
    hits = []
    for folder in ("sta_models", "worker", "dashboard"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".html", ".js") or path == ROOT / "sta_models" / "branches.py":
                continue
            hits += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                     if pattern.search(line)]
    assert hits == []


def test_one_more_entry_is_trained_and_gets_cams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(B.BRANCHES, TINY.name, TINY)
    feat = tmp_path / "features"
    feat.mkdir()
    rows: dict[str, list] = {"train": [], "val": []}
    for c in range(2):
        for j in range(2):
            write_features(feat / f"v{c}{j}.h5", c, seconds=4, seed=c * 5 + j, invalid_audio=(2,) if j == 0 else ())
            rows["val" if j else "train"].append(make_row(f"v{c}{j}", c, 0, 4))
    short = make_row("v00", 0, 0, 2)  # shorter than the entry's min_event_s

    ds = FeatureDataset([*rows["train"], short], feat, "tw", 32, train=True)
    item = ds[0]
    assert item["frames"].shape == (3, 3, 32, 32) and item["audios"].shape == (3, 1, 81, 199)
    assert "image" not in item and "audio" not in item
    assert ds.exclusions() == {"audio_invalid_samples": 2, "short_event_rows": 1}  # needs_audio, min_event_s
    assert ds.seconds_for(0) == [0, 0, 1]  # the window, clamped to the event

    LOSS_CALLS.clear()
    cfg = TrainConfig(backbone="resnet18", input_size=32, epochs=1, batch_size=4, lr=1e-3, decay_epochs=[2],
                      workers=0, device="cpu")
    res = train_branch("tw", rows, feat, tmp_path / "train", cfg, use_cache=False)
    record = json.loads((tmp_path / "train" / "record.json").read_text())
    assert record["branch"] == "tw" and record["samples"] == {"train": 6, "val": 8}
    assert sum(LOSS_CALLS) == 6 + 8  # its registered loss, in training and validation
    assert res.epochs_done == 1 and res.best_checkpoint is not None

    summary = compute_cams("tw", res.best_checkpoint, [*rows["val"], short], feat, tmp_path / "cams", canvas=32,
                           device="cpu")
    assert summary.rows_written == 2 and summary.frames == 8
    assert summary.skipped_rows == {short.key: "event shorter than 3 s (no TW CAM)"}


def test_one_more_entry_appears_in_stages_config_form_and_cli() -> None:
    """Registered before anything else imports the registry, as an entry in sta_models/branches.py is."""
    code = """
import json
from sta_models.branches import BranchSpec, register_branch
register_branch(BranchSpec(name="tw", label="TW", network="tests.models.test_branch_registry:TinyWindowBranch",
                           inputs=("frames", "audios"), window=3, min_event_s=3, paper_batch_size=8))
import argparse
from pydantic import ValidationError
from sta_models.commands.training import register
from sta_models.config import PipelineConfig, preset
from worker.stages import GRAPH
from dashboard.config_form import TRAIN_GROUPS
subcommands = argparse.ArgumentParser().add_subparsers()
register(subcommands)
choices = [a.choices for a in subcommands.choices["cams"]._actions if a.dest == "branch"]
cfg = preset("paper").model_dump()
del cfg["fine"]["tw"]
try:
    PipelineConfig.model_validate(cfg)
    missing = None
except ValidationError as exc:
    missing = str(exc).splitlines()[1:3]
print(json.dumps({"stages": {s.kind: list(s.depends_on) for s in GRAPH.required}, "groups": dict(TRAIN_GROUPS),
                  "batch": preset("paper").coarse["tw"].batch_size, "choices": list(choices[0]),
                  "missing": missing}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["stages"]["train_tw_coarse"] == ["extract"] and "train_tw_fine" in got["stages"]
    assert "train_tw_coarse" in got["stages"]["cams_coarse"] and "train_tw_fine" in got["stages"]["cams_fine"]
    assert got["groups"]["coarse.tw"] == "Coarse TW" and got["groups"]["fine.tw"] == "Fine TW"
    assert got["batch"] == 8 and got["choices"] == ["s", "sa", "st", "tw"]
    assert "missing branch settings: ['tw']" in " ".join(got["missing"])
