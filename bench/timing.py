"""Training-step timing shared by the benchmarks (bench_dataloader.py, gpu_check.py).

Why one place: both time a forward + loss + backward + SGD step of a network on synthetic inputs
shaped as ``prepare_batch`` makes them, with a warm-up step first (allocation, cuDNN autotune) and
the GPU synchronised around every timed step; two copies had already drifted apart.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from sta_models.networks import branch_loss, run_branch
from sta_models.sta_loss import sta_loss


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(net: str, size: int, batch: int, device: torch.device,
                    channels_last: bool = False) -> dict[str, torch.Tensor]:
    """Inputs of ``net`` (s, sa, st or sta) shaped as ``prepare_batch`` makes them (normalised float,
    audio log-spectrograms), labels over the 28 AVE classes."""
    x: dict[str, torch.Tensor] = {"label": torch.randint(0, 28, (batch,), device=device)}
    if net in ("st", "sta"):
        x["frames"] = torch.randn(batch, 3, 3, size, size, device=device)
    else:
        x["image"] = torch.randn(batch, 3, size, size, device=device)
        if channels_last:
            x["image"] = x["image"].contiguous(memory_format=torch.channels_last)
    if net == "sa":
        x["audio"] = torch.randn(batch, 1, 81, 199, device=device)
    if net == "sta":
        x["audios"] = torch.randn(batch, 3, 1, 81, 199, device=device)
        x["target"] = torch.rand(batch, 3, size, size, device=device)
    return x


def loss_of(net: str, model: torch.nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss of ``net`` on ``x`` (SPEC §3 for the branches, §6 for STA)."""
    if net == "sta":
        return sta_loss(model(x["frames"], x["audios"]), x["target"])
    return branch_loss(run_branch(model, x), x["label"], net)  # type: ignore[arg-type]


def step_times(net: str, model: torch.nn.Module, opt: torch.optim.Optimizer, x: dict[str, torch.Tensor],
               device: torch.device, steps: int,
               amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> list[float]:
    """Seconds of each of ``steps`` training steps, after one untimed warm-up step."""
    times = []
    for i in range(steps + 1):
        sync(device)
        t0 = time.perf_counter()
        with amp():
            loss = loss_of(net, model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i:  # the first step pays allocation / autotuning
            times.append(time.perf_counter() - t0)
    return times
