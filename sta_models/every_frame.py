"""A saliency map for every frame of a clip, each frame's backbone features computed once.

Frame i (0-based, shown at t = i/fps) is predicted by STA from the frames nearest t − 1 s, t and
t + 1 s (clamped to the clip, :func:`sta_models.clips.frame_neighbours`) with the 1-s audio
windows centred on those frames' times: the ±1 s spacing STA was trained with (one frame per
second, SPEC §6). Everything STA computes from a single frame and its audio (backbone, the three
projections, the audio mask; :meth:`STA.frame_features`) is the same whichever output frame it
serves, so it is computed once per frame and kept while a neighbour still needs it; only the
temporal mask, fusion and decoder run per output frame. The "naive" path (``reuse=False``) calls
the full network on each (t−1, t, t+1) triple — three backbone passes per frame — and gives the
same maps; it exists for the benchmark and the equality test.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from sta_models.callbacks import NO_CALLBACKS, Callbacks
from sta_models.clips import FrameClip, frame_neighbours
from sta_models.datasets import prepare_batch, resize_frames
from sta_models.networks.sta import STA, FrameFeatures
from sta_models.trainer import autocast_for

MapSink = Callable[[int, np.ndarray], None]
"""(0-based frame index, saliency [input_size, input_size] float32 in [0, 1])."""


@dataclass
class FrameStats:
    """What one clip cost: output frames, frames run through the backbone, wall and CPU seconds
    (CPU time of this process, all threads: comparable on a machine shared with other jobs)."""

    frames: int
    backbone_frames: int
    seconds: float
    cpu_seconds: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def model_inputs(clip: FrameClip, indices: np.ndarray, *, frame_size: int, input_size: int,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """Normalised images [n, 3, S, S] and audio [n, 1, 81, 199] of frames ``indices`` on ``device``.

    Frames go to the model's stored frame size first, then to its input size, as in training
    (extraction stores ``frame_size``, the datasets resize to ``input_size``).
    """
    frames = clip.read(indices)
    if frames.shape[1:3] != (frame_size, frame_size):
        frames = resize_frames(frames, frame_size).permute(0, 2, 3, 1).numpy()
    images = resize_frames(frames, input_size)
    spec, _ = clip.audio_features(indices)
    return prepare_batch({"image": images, "audio": torch.from_numpy(spec).unsqueeze(1)}, device)


@torch.no_grad()
def predict_every_frame(model: STA, clip: FrameClip, on_map: MapSink, *, input_size: int, frame_size: int,
                        device: torch.device, batch_size: int = 8, reuse: bool = True,
                        callbacks: Callbacks = NO_CALLBACKS) -> FrameStats:
    """Call ``on_map`` for every frame of ``clip`` in order; see the module docstring."""
    start, cpu_start = time.perf_counter(), time.process_time()
    nb = frame_neighbours(clip.n_frames, clip.fps)
    step = max(1, batch_size)
    cache: dict[int, FrameFeatures] = {}
    backbone_frames = 0
    for lo in range(0, clip.n_frames, step):
        callbacks.check_cancel()
        sel = nb[lo : lo + step]
        if reuse:
            todo = [int(j) for j in np.unique(sel) if int(j) not in cache]
            for k in range(0, len(todo), step):
                part = np.asarray(todo[k : k + step])
                batch = model_inputs(clip, part, frame_size=frame_size, input_size=input_size, device=device)
                with autocast_for(device):
                    feats = model.frame_features(batch["image"], batch["audio"])
                for row, j in enumerate(part):
                    cache[int(j)] = feats.select(torch.tensor([row], device=device))
                backbone_frames += len(part)
            prev, cur, nxt = (FrameFeatures.cat([cache[int(j)] for j in sel[:, c]]) for c in range(3))
            with autocast_for(device):
                sal = model.saliency_from_features(prev, cur, nxt)
            keep_from = int(nb[min(lo + step, clip.n_frames - 1), 0])
            for j in [j for j in cache if j < keep_from]:
                del cache[j]
        else:
            uniq, inverse = np.unique(sel, return_inverse=True)
            batch = model_inputs(clip, uniq, frame_size=frame_size, input_size=input_size, device=device)
            idx = torch.from_numpy(inverse.reshape(sel.shape)).to(device)
            with autocast_for(device):
                sal = model.saliency(batch["image"][idx], batch["audio"][idx])
            backbone_frames += sel.size
        for j, m in enumerate(sal.float().cpu().numpy()):
            on_map(lo + j, m)
    return FrameStats(frames=clip.n_frames, backbone_frames=backbone_frames, seconds=time.perf_counter() - start,
                      cpu_seconds=time.process_time() - cpu_start)
