"""The stage's device names checked on the worker that runs it, before any work starts.

Why here: ``cuda:3`` is a valid setting on an 8-GPU host and the submission cannot know which host
takes the stage, so the check runs at claim time and fails the stage with one line that says what
this worker has (instead of a CUDA assertion deep in the first batch).
"""

from __future__ import annotations

from typing import Any


class DeviceUnavailable(RuntimeError):
    """The configured device does not exist on this worker."""


def stage_devices(kind: str, config: Any) -> list[str]:
    """The device settings a stage of ``kind`` uses (``[]``: CPU-only stage), as its declaration says."""
    from worker.stages import GRAPH

    spec = GRAPH.get(kind)
    return list(spec.devices(config)) if spec is not None else []


def check_device(name: str, where: str) -> None:
    """Raise :class:`DeviceUnavailable` when ``name`` (a validated device setting) is not on this host."""
    if not name.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceUnavailable(f"{where}: device {name!r} requested, but worker has no CUDA GPU; "
                                "use 'auto' or 'cpu', or run the stage on a GPU worker")
    index = int(name.split(":", 1)[1]) if ":" in name else 0
    if index >= count:
        raise DeviceUnavailable(f"{where}: device {name!r} requested, but this worker has {count} GPU(s) "
                                f"(cuda:0 … cuda:{count - 1})")


def check_stage_devices(kind: str, config: Any, host: str) -> None:
    for name in dict.fromkeys(stage_devices(kind, config)):
        check_device(name, f"stage {kind} on {host}")
