"""Precise BatchNorm statistics: recompute the running mean/variance before a network is evaluated.

Why: BatchNorm's running averages (momentum 0.1) lag the weights. From random init the weights
move fast and a small preset takes 12–40 SGD steps in all, so at validation the averages describe
a network of several steps ago and eval mode gives every input the same class: measured on the
tiny set, S after 5 epochs scored val top-1 0.333 (chance) in eval mode and 1.000 with the batch's
own statistics; with the statistics recomputed as below, 1.000 in eval mode too
(docs/method-notes.md, "BatchNorm statistics"). The fix is the "precise BN" of Wu & Johnson,
*Rethinking "Batch" in BatchNorm* (2021): average the per-batch statistics of the current weights
over training batches of the training batch size (so eval mode normalises like training did).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers that keep running statistics (the ones eval mode reads)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _buffer(buf: torch.Tensor | None, value: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of a running-statistics buffer, or (``value`` given) the buffer overwritten with it."""
    if buf is None:  # not reached: batchnorm_layers keeps only layers that track statistics
        raise ValueError("BatchNorm layer without running statistics")
    return buf.clone() if value is None else buf.copy_(value)


def recompute_batchnorm(model: nn.Module, batches: Iterable[Any], forward: Callable[[Any], object],
                        max_batches: int, on_batch: Callable[[int], None] | None = None) -> int:
    """Replace every BatchNorm's running mean/variance by the mean of its per-batch statistics.

    ``forward(batch)`` runs the network on one batch (its result is dropped); at most
    ``max_batches`` are used. Returns how many were: with none (an empty loader) the old
    statistics are put back. No gradients, no parameter changes; the model's train/eval mode and
    each layer's momentum are restored.
    """
    layers = batchnorm_layers(model)
    if not layers or max_batches < 1:
        return 0
    saved = [(m.momentum, _buffer(m.running_mean), _buffer(m.running_var), _buffer(m.num_batches_tracked))
             for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts once
    model.train()
    used = 0
    try:
        with torch.no_grad():
            for batch in batches:
                if used >= max_batches:
                    break
                forward(batch)
                used += 1
                if on_batch is not None:
                    on_batch(used)
    finally:
        for m, (momentum, mean, var, tracked) in zip(layers, saved, strict=True):
            m.momentum = momentum
            if used == 0:
                _buffer(m.running_mean, mean)
                _buffer(m.running_var, var)
                _buffer(m.num_batches_tracked, tracked)
        model.train(was_training)
    return used
