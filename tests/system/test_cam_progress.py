"""A CAM stage's progress covers its three branches (it used to end on "9/9 st CAMs", naming only
the last): the real stage body (``cams_coarse`` in ``worker.stages.GRAPH``) runs the real ``compute_cams`` for S, SA and
ST on the synthetic set's features, and its reports are read back as the pages read them
(``worker.progress.progress_text``)."""

from __future__ import annotations

import re
from pathlib import Path

from sta_models.callbacks import Callbacks
from sta_models.config import preset
from tests.models.test_cams import _checkpoint
from worker.logs import StageLog
from worker.progress import progress_text
from worker.stage_context import Inputs, StageContext
from worker.stages import GRAPH

LINE = re.compile(r"^(\d+)/(\d+) CAM batches · branch (\d)/3 \((.*)\)$")


def test_cam_stage_progress_names_every_branch(synth_root: Path, synth_features: Path, tmp_path: Path) -> None:
    reports: list[tuple[int, int, str]] = []
    dirs = {"extract": synth_features}
    for b in ("s", "sa", "st"):
        dirs[f"train_{b}_coarse"] = tmp_path / f"train_{b}_coarse"
        dirs[f"train_{b}_coarse"].mkdir()
        _checkpoint(tmp_path, b).rename(dirs[f"train_{b}_coarse"] / "best.pt")
    cfg = preset("tiny")
    for b in cfg.coarse:
        cfg.coarse[b].device = "cpu"
    ctx = StageContext(url="sqlite://", stage_id=1, pipeline_id=1, kind="cams_coarse", token="t", host="h",
                       config=cfg, dataset_root=synth_root, output_dir=tmp_path / "cams",
                       inputs=Inputs("cams_coarse", GRAPH["cams_coarse"].inputs, dirs),
                       callbacks=Callbacks(progress=lambda d, t, w="": reports.append((d, t, w))),
                       stage_log=StageLog(tmp_path / "cams.log"))
    GRAPH["cams_coarse"].body(ctx)

    texts = [progress_text("cams_coarse", cfg.model_dump(), d, t, w) for d, t, w in reports]
    parsed = [LINE.match(t or "") for t in texts]
    assert all(parsed), texts
    per_branch = {m.group(3): m.group(4) for m in parsed if m}
    assert sorted(per_branch) == ["1", "2", "3"], texts  # every branch reported while it ran
    last = parsed[-1]
    assert last is not None
    done, total = int(last.group(1)), int(last.group(2))
    finals = dict(part.split(" ") for part in last.group(4).split(", "))
    assert list(finals) == ["s", "sa", "st"], texts[-1]
    for b, frac in finals.items():
        d, t = map(int, frac.split("/"))
        assert d == t > 0, (b, texts[-1])  # each branch finished all its batches
    assert done == total == sum(int(f.split("/")[1]) for f in finals.values()), texts[-1]
    # the totals only grow and never run backwards: no restart at 0/9 for the second branch
    assert [d for d, _, _ in reports] == sorted(d for d, _, _ in reports)
    print(texts[-1])
