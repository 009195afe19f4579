"""Progress in words people read: "epoch 3/6 · batch 40/88", "12/40 videos (1 failed)".

One function for the pages, the API and the terminal. The trainer reports batches within an epoch
as ``(batch, batches, "epoch N")`` (or ``"epoch N · <phase>"`` for a pass after the training
batches: "epoch 3/6 · BatchNorm statistics · batch 2/5"); the epoch total comes from the config.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

_EPOCH = re.compile(r"^epoch (\d+)(?: · (.+))?$")  # "epoch 3", or a phase in it: "epoch 3 · BatchNorm statistics"


def epochs_total(kind: str, config: dict[str, Any] | None) -> int | None:
    """Configured epochs of a training stage (``train_sa_coarse`` → ``config.coarse.sa.epochs``)."""
    cfg = config or {}
    parts = kind.split("_")
    section: Any = None
    if kind == "train_sta":
        section = cfg.get("sta")
    elif len(parts) == 3 and parts[0] == "train":
        section = (cfg.get(parts[2]) or {}).get(parts[1])
    value = section.get("epochs") if isinstance(section, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def progress_text(kind: str, config: dict[str, Any] | None, done: int, total: int, what: str | None,
                  failed: int = 0) -> str | None:
    """The stage's progress as one short phrase, or None when it reported none."""
    if not total and not done:
        return None
    match = _EPOCH.match(what or "")
    if match:
        n = epochs_total(kind, config)
        phase = f" · {match.group(2)}" if match.group(2) else ""
        return f"epoch {match.group(1)}{f'/{n}' if n else ''}{phase} · batch {done}/{total}"
    text = f"{done}/{total}"
    if what:
        text += f" {what}"
    if failed:
        text += f" ({failed} failed)"
    return text


class BranchesProgress:
    """One stage's progress over a library call per branch (the CAM stages run S, SA, ST in turn).

    Each call reports its own batches; passed on as is, the stage's last words were "9/9 st CAMs",
    as if only ST had run. This sums the branches that have started and names each:
    "22/27 CAM batches · branch 3/3 (s 9/9, sa 9/9, st 4/9)". A branch's total is known only once
    it starts, so the "branch k/n" part says how many are still to come.
    """

    def __init__(self, report: Callable[[int, int, str], None], branches: Sequence[str],
                 what: str = "CAM batches") -> None:
        self.report, self.branches, self.what = report, tuple(branches), what
        self.counts: dict[str, tuple[int, int]] = {}

    def for_branch(self, branch: str) -> Callable[..., None]:
        """The ``progress`` hook to give the call of ``branch``."""
        def progress(done: int, total: int, what: str = "") -> None:
            self.counts[branch] = (int(done), int(total))
            parts = ", ".join(f"{b} {d}/{t}" for b, (d, t) in self.counts.items())
            step = self.branches.index(branch) + 1
            self.report(sum(d for d, _ in self.counts.values()), sum(t for _, t in self.counts.values()),
                        f"{self.what} · branch {step}/{len(self.branches)} ({parts})")
        return progress


def rounded(value: Any, digits: int = 3) -> str:
    """A number for people: 3 significant-ish decimals, "–" for none, integers as integers."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e5):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}"


__all__ = ["BranchesProgress", "epochs_total", "progress_text", "rounded"]
