"""The saliency metrics (SPEC §7), each declared once: name → function, what it needs, label, direction.

Why one table: the metric names, labels and "lower is better" were spelled out in the scorer,
the result schema, the demo's table, the ablation and the dashboard's results and compare pages;
they all read :data:`METRICS` now. Adding a metric = one :class:`Metric` entry below + its function
in :mod:`sta_models.metrics` (docs/architecture.md, "How to add a metric"). Order matters: it is
the column order everywhere, and the order in which the seeded random metrics draw from a frame's
generator (so reordering changes their values).

Torch- and numpy-free (the dashboard imports it); the function is named, looked up in
:mod:`sta_models.metrics` only when a map is scored (:func:`sta_models.evaluation.score_metric`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Metric:
    """One metric and the call its function takes: ``fn(s, ground truth[, other], **kwargs)``.

    ``needs``: the second argument is the continuous ground-truth map (``"map"``) or the binary
    fixation map (``"fixations"``). ``other_frames``: a third argument, the fixations of the
    video's other frames minus this frame's (s-AUC's negatives). ``random``: takes ``rng=``, the
    frame's seeded generator. ``splits``: takes ``n_splits=`` and ``step=`` from
    ``EvaluateConfig``. ``options``: fixed keyword arguments.
    """

    name: str  # the key in metrics.json, CSV columns and the API
    label: str
    function: str | Callable[..., float]  # attribute of sta_models.metrics (or the function)
    needs: Literal["map", "fixations"]
    other_frames: bool = False
    random: bool = False
    splits: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    lower_is_better: bool = False
    in_demo_table: bool = True  # a column of ``stapipe demo``'s closing table (worker.report)
    description: str = ""


#: name → metric, in table order; NAMES, LABELS and LOWER_IS_BETTER follow it (:func:`register_metric`).
METRICS: dict[str, Metric] = {}
NAMES: tuple[str, ...] = ()
LABELS: dict[str, str] = {}
LOWER_IS_BETTER: frozenset[str] = frozenset()


def register_metric(metric: Metric) -> Metric:
    """Append ``metric`` to the table. Modules that import the table's names read them when they
    are imported, so an entry belongs in this file (a test may add one before anything else imports it)."""
    global NAMES, LABELS, LOWER_IS_BETTER
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    NAMES = tuple(METRICS)
    LABELS = {m.name: m.label for m in METRICS.values()}
    LOWER_IS_BETTER = frozenset(m.name for m in METRICS.values() if m.lower_is_better)
    return metric


for _metric in (
    Metric("cc", "CC", "cc", "map", description="Pearson correlation with the continuous map"),
    Metric("nss", "NSS", "nss", "fixations", description="mean standardised saliency at the fixations"),
    Metric("sim", "SIM", "sim", "map", description="histogram intersection with the continuous map"),
    Metric("kld", "KLD", "kld", "map", lower_is_better=True, description="KL(GT ‖ prediction)"),
    Metric("auc_j", "AUC-J", "auc_judd", "fixations", random=True, options={"jitter": True},
           description="AUC-Judd, jittered with the frame's seeded generator"),
    Metric("auc_b", "AUC-B", "auc_borji", "fixations", random=True, splits=True, in_demo_table=False,
           description="AUC-Borji: uniformly drawn negatives"),
    Metric("sauc", "s-AUC", "sauc", "fixations", other_frames=True, random=True, splits=True,
           description="shuffled AUC: negatives from the video's other frames' fixations"),
):
    register_metric(_metric)


def label(name: str) -> str:
    """A metric's label; an unknown name (an older or newer file) is shown as it is."""
    return LABELS.get(name, name)


def direction_note(names: tuple[str, ...] | list[str] | None = None, *, labels: bool = True) -> str:
    """"KLD: lower is better; all others: higher is better" for the metrics ``names`` (tables'
    footers); ``labels=False`` names them by key, as a table whose columns are keys."""
    lower = [label(n) if labels else n for n in (NAMES if names is None else names) if n in LOWER_IS_BETTER]
    if not lower:
        return "all: higher is better"
    return f"{', '.join(lower)}: lower is better; all others: higher is better"
