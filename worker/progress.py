"""Progress in words people read: "epoch 3/6 · batch 40/88", "12/40 videos (1 failed)".

One function for the pages, the API and the terminal. The trainer reports batches within an epoch
as ``(batch, batches, "epoch N")``; the epoch total comes from the pipeline's config.
"""

from __future__ import annotations

import re
from typing import Any

_EPOCH = re.compile(r"^epoch (\d+)$")


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
        return f"epoch {match.group(1)}{f'/{n}' if n else ''} · batch {done}/{total}"
    text = f"{done}/{total}"
    if what:
        text += f" {what}"
    if failed:
        text += f" ({failed} failed)"
    return text


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


__all__ = ["epochs_total", "progress_text", "rounded"]
