"""Precise BatchNorm statistics (``sta_models.batchnorm``, #18): what eval mode reads after a
recompute is the mean of the per-batch statistics of the current weights, and nothing else moves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sta_models.batchnorm import batchnorm_layers, recompute_batchnorm


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))


def test_running_statistics_become_the_mean_of_the_batch_statistics() -> None:
    net = _net().eval()
    batches = [torch.randn(4, 3, 8, 8) * (i + 1) + i for i in range(3)]
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "tracked" not in k}
    momentum = net[1].momentum

    used = recompute_batchnorm(net, batches, net, max_batches=10)

    assert used == 3
    bn = net[1]
    conv = [net[0](b) for b in batches]
    mean = torch.stack([c.mean((0, 2, 3)) for c in conv]).mean(0)
    var = torch.stack([c.var((0, 2, 3), unbiased=True) for c in conv]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, var.detach(), rtol=1e-4, atol=1e-5)
    assert not net.training and bn.momentum == momentum  # mode and momentum put back
    for k, v in net.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k  # no parameter moved


def test_max_batches_and_an_empty_loader() -> None:
    net = _net().train()
    before = net[1].running_mean.clone()
    assert recompute_batchnorm(net, [], net, max_batches=10) == 0
    assert torch.equal(net[1].running_mean, before) and net.training  # nothing seen: the old statistics stay
    seen: list[int] = []
    batches = [torch.randn(2, 3, 8, 8) for _ in range(5)]
    assert recompute_batchnorm(net, batches, net, max_batches=2, on_batch=seen.append) == 2
    assert seen == [1, 2] and int(net[1].num_batches_tracked) == 2


def test_a_network_without_batchnorm_is_left_alone() -> None:
    net = nn.Sequential(nn.Linear(3, 2))
    assert batchnorm_layers(net) == []
    assert recompute_batchnorm(net, [torch.randn(2, 3)], pytest.fail, max_batches=5) == 0
