"""Disk a pipeline will keep, estimated before it runs from the dataset's size and the config.

Per stage, from the formats the stages write (bytes per stored second, per file and per
preview; the per-file and preview figures measured with the real writers by
``bench/bench_disk.py``, see bench/RESULTS.md). ``checkpoints="config"`` (the default) follows
each training section's ``keep_checkpoints``: ``needed`` keeps only ``best.pt`` (the weights),
``all`` also ``last.pt`` (weights + SGD momentum), 3× the weights. ``"today"`` is every stage
keeping both (as before issue 16), ``"slim"`` every stage only the weights. ``formats="before"`` gives the figure of the
formats before issue 16 (CAMs at the canvas size, crops as copies of the frames and audio), for
comparison. Torch-free: the dashboard and ``stapipe submit`` call it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from sta_models.branches import BRANCHES, TEMPORAL_MIN_EVENT_S
from sta_models.config import PipelineConfig
from sta_models.pseudogt import PREVIEW_ROWS

AUDIO_BYTES = 81 * 199 * 4  # one second's log-spectrogram, float32
# parameters + buffers (float32) of each network, counted on the built models (the branches' counts
# are their registry entries' ``params``)
WEIGHTS = {
    **{(backbone, b): n for b, spec in BRANCHES.items() for backbone, n in spec.params.items()},
    ("resnet18", "sta"): 27_175_206, ("resnet50", "sta"): 60_079_879, ("resnext101_32x8d", "sta"): 123_463_994,
}
# measured (bench/bench_disk.py): HDF5 bytes of a file beyond its arrays, preview PNG bytes per pixel
CAM_FILE_FIXED = 6_700
CROP_FILE_FIXED = 8_000
PGT_FILE_FIXED = 11_000
FEATURE_FILE_FIXED = 14_600
CAM_PREVIEW_PER_PIXEL = 0.8  # heat-map overlay PNG, canvas²
CROP_PREVIEW_PER_PIXEL = 0.65  # frame with box | crop, 2·size²
PGT_PREVIEW_PER_PIXEL = 0.25  # pseudo-GT over the crop on grey, size²
PREVIEWS_PER_ROW = 3  # per row and branch, for the first PREVIEW_ROWS rows of a stage (before: every row)
PREDICTION_PNG_PER_PIXEL = 0.6  # grey saliency maps


@dataclass(frozen=True)
class DatasetSize:
    """What the estimate needs from a dataset."""

    videos: int
    video_seconds: int  # stored seconds of all videos
    rows: int
    event_seconds: int  # Σ over rows of the event's length
    st_rows: int  # rows with an event of ≥ 3 s (window branches such as ST, and STA, use only those)
    st_event_seconds: int
    test_video_seconds: int

    @classmethod
    def of_rows(cls, rows: Iterable[Any], test_rows: Iterable[Any] = ()) -> DatasetSize:
        """From annotation rows; a video's length is taken as its latest event end (AVE: ≤ 10 s)."""
        rows = list(rows)
        length: dict[str, int] = {}
        for r in rows:
            length[r.video_id] = max(length.get(r.video_id, 0), int(r.end))
        test_len: dict[str, int] = {r.video_id: length.get(r.video_id, int(r.end)) for r in test_rows}
        long = [r for r in rows if r.end - r.start >= TEMPORAL_MIN_EVENT_S]
        return cls(videos=len(length), video_seconds=sum(length.values()), rows=len(rows),
                   event_seconds=sum(r.end - r.start for r in rows), st_rows=len(long),
                   st_event_seconds=sum(r.end - r.start for r in long),
                   test_video_seconds=sum(test_len.values()))


def _grid(input_size: int, branch: str) -> int:
    """Class-map grid = ceil(input / stride)."""
    return -(-input_size // BRANCHES[branch].stride)


def _rows_secs(ds: DatasetSize, branch: str) -> tuple[int, int]:
    long = BRANCHES[branch].min_event_s >= TEMPORAL_MIN_EVENT_S
    return (ds.st_rows, ds.st_event_seconds) if long else (ds.rows, ds.event_seconds)


def estimate(cfg: PipelineConfig, ds: DatasetSize, *, checkpoints: Literal["config", "today", "slim"] = "config",
             formats: Literal["after", "before"] = "after") -> dict[str, int]:
    """Bytes per stage kind (the keys of ``worker.stages``) the pipeline will keep."""
    size = cfg.extract.size
    frame = size * size * 3
    pixels = size * size

    def copies(keep: str) -> int:  # checkpoint files' size in weights: best.pt 1, last.pt 2 (momentum)
        return 3 if checkpoints == "today" or (checkpoints == "config" and keep == "all") else 1

    def previews(rows: int) -> int:  # preview PNGs of a stage (per branch for CAMs)
        return PREVIEWS_PER_ROW * (rows if formats == "before" else min(rows, PREVIEW_ROWS))

    out: dict[str, int] = {"extract": ds.video_seconds * (frame + AUDIO_BYTES + 1) + ds.videos * FEATURE_FILE_FIXED}
    for phase in ("coarse", "fine"):
        section = cfg.coarse if phase == "coarse" else cfg.fine
        cams = 0
        for b in BRANCHES:
            t = section[b]
            out[f"train_{b}_{phase}"] = 4 * WEIGHTS[(t.backbone, b)] * copies(t.keep_checkpoints)
            n_rows, secs = _rows_secs(ds, b)
            per_second = 2 * size * size if formats == "before" else 2 * _grid(t.input_size, b) ** 2 + 4
            cams += n_rows * CAM_FILE_FIXED + int(previews(n_rows) * CAM_PREVIEW_PER_PIXEL * pixels) \
                + secs * (per_second + 14)
        out[f"cams_{phase}"] = cams
    row_seconds = ds.video_seconds * ds.rows // max(ds.videos, 1)  # a crop file covers its whole video
    out["crops"] = ds.rows * CROP_FILE_FIXED + int(previews(ds.rows) * CROP_PREVIEW_PER_PIXEL * 2 * pixels) \
        + row_seconds * 23  # boxes
    if formats == "before":  # the frames and audio copied, no previews
        out["crops"] = ds.rows * CROP_FILE_FIXED + row_seconds * (frame + AUDIO_BYTES + 23)
    out["pseudo_gt"] = (ds.event_seconds * 2 * pixels + ds.rows * PGT_FILE_FIXED
                        + int(previews(ds.rows) * PGT_PREVIEW_PER_PIXEL * pixels))
    out["train_sta"] = 4 * WEIGHTS[(cfg.sta.backbone, "sta")] * copies(cfg.sta.keep_checkpoints)
    out["evaluate"] = int(ds.test_video_seconds * PREDICTION_PNG_PER_PIXEL * size * size)
    return out
