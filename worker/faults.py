"""Test-only fault injection, read from ``STAPIPE_FAULTS`` by the task wrappers.

Format: comma-separated ``<target>:<n>[:<mode>]``. ``target`` is a stage kind (``train_sa_coarse``)
or ``extract:<video_id>`` for one extraction item; the fault fires on attempts 1..n of that stage
(attempts are counted in the DB, so a re-run — attempt n+1 — succeeds). Modes: ``raise`` (default:
an :class:`InjectedFault` before the library is called) or ``slow`` (sleep ``n`` seconds, checking
cancellation each second: makes a stage long enough to cancel or kill in a test).

Never set in production; documented in docs/decisions.md as a test hook.
"""

from __future__ import annotations

import os
import time
from typing import Any


class InjectedFault(RuntimeError):
    """Raised by the fault hook; the stage fails like any other error."""


def parse(spec: str | None) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        fields = part.rsplit(":", 2) if part.count(":") >= 2 and part.rsplit(":", 1)[1] in ("raise", "slow") else \
            part.rsplit(":", 1) + ["raise"]
        target, n, mode = fields[0], int(fields[1]), fields[2]
        out[target] = (n, mode)
    return out


def maybe_inject(target: str, attempt: int, callbacks: Any | None) -> None:
    """Fire the configured fault for ``target`` on this attempt, if any."""
    faults = parse(os.environ.get("STAPIPE_FAULTS"))
    if target not in faults:
        return
    n, mode = faults[target]
    if mode == "slow":
        for _ in range(n):
            if callbacks is not None:
                callbacks.check_cancel()
            time.sleep(1.0)
        return
    if attempt <= n:
        raise InjectedFault(f"injected fault in {target} (attempt {attempt} of {n} failing; STAPIPE_FAULTS)")
