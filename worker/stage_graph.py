"""The stage registry: each stage kind declared once, next to its body, and the graph checked on load.

Modelled on torchvision's ``register_model`` (a decorator that puts a builder into a registry the
rest of the code iterates over) and Dagster's steps with named inputs (a body gets its upstream
outputs by name and cannot read one it did not declare). A declaration says everything the job
system needs about a kind: its queue, the stages it waits for, the outputs it reads, the config
sections that make up its input hash, whether it fans out into per-item tasks, the kinds of its
artefacts, whether a pipeline gets it only on request, and the devices it uses.

Pure: imports nothing from ``db``, Celery or torch, so the dashboard, the CLI and the Celery parent
process can all read the graph.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.stage_context import ItemJob, StageContext


class Queue(enum.StrEnum):
    """Celery queues: ``cpu`` for extraction and file work, ``gpu`` for training and inference."""

    CPU = "cpu"
    GPU = "gpu"


class GraphError(ValueError):
    """A stage graph that cannot run (missing dependency, cycle, undeclared input, no body)."""


Body = Callable[[StageContext], Any]
ConfigKey = tuple[str, ...]

#: artefact kind by file suffix, unless a stage declares its own (``StageSpec.artefacts``)
DEFAULT_ARTEFACTS: Mapping[str, str] = {".pt": "checkpoint", ".mp4": "video", ".png": "preview", ".log": "log",
                                        ".h5": "data"}


@dataclass(frozen=True)
class FanOut:
    """A stage that hands its work to one task per item (the ``extract`` stage: one per video).

    The stage's body lists the item keys; :mod:`worker.fanout` creates an item row and a message
    for each, ``run`` does one item (in an item task, on the stage's queue) and writes
    ``output(job)``, and the stage finishes when every item is final: succeeded when at least
    ``min_success(config)`` of them succeeded. ``redo(ctx, key, output)`` tells whether a succeeded
    item of an earlier attempt must run again (its input changed).
    """

    run: Callable[[ItemJob], None]
    output: Callable[[ItemJob], Path]
    min_success: Callable[[Any], float]  # PipelineConfig → fraction
    redo: Callable[[StageContext, str, Path | None], bool] = lambda ctx, key, out: out is None or not out.is_file()
    unit: str = "items"  # the progress unit shown on the dashboard and in the summary ("videos")
    done: str = "done"  # the summary's word for succeeded items ("extracted")
    report: str | None = None  # a JSON file of the summary written into the stage's folder on success


@dataclass(frozen=True)
class StageSpec:
    """One stage kind. ``depends_on``: the stages it waits for; ``inputs``: the upstream stages
    whose output folders its body reads (each must be upstream of it); ``config``: dotted config
    sections hashed into its input hash; ``optional``: added to a pipeline only on request."""

    kind: str
    queue: Queue
    depends_on: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    config: tuple[ConfigKey, ...] = ()
    body: Body | None = None
    fan_out: FanOut | None = None
    artefacts: Mapping[str, str] = field(default_factory=dict)  # suffix → artefact kind, over the defaults
    optional: bool = False
    devices: Callable[[Any], list[str]] = lambda config: []  # PipelineConfig → device settings it uses
    calls: str = ""  # the library function it calls (for the docs table)

    def artefact_kind(self, path: Path) -> str:
        """The kind an artefact row of this stage gets for ``path`` (shown grouped on the pages)."""
        ext = path.suffix.lower()
        if ext in (".json", ".csv"):
            return "metrics" if path.stem.startswith("metrics") else "report"
        if ext == ".png" and "preview" in path.parts:
            return "preview"
        return self.artefacts.get(ext) or DEFAULT_ARTEFACTS.get(ext, "file")


class StageGraph:
    """A registry of stage kinds. ``@graph.stage(...)`` declares a kind with the decorated function
    as its body (or ``graph.stage(...)(body)`` several parametrised kinds with one body);
    :meth:`check` validates the whole graph and fixes its order."""

    def __init__(self, name: str = "stages") -> None:
        self.name = name
        self._specs: dict[str, StageSpec] = {}
        self._checked = False

    # -- declaring ---------------------------------------------------------------------------

    def stage(self, kind: str, *, queue: Queue, depends_on: tuple[str, ...] = (), inputs: tuple[str, ...] = (),
              config: tuple[ConfigKey, ...] = (), fan_out: FanOut | None = None,
              artefacts: Mapping[str, str] | None = None, optional: bool = False,
              devices: Callable[[Any], list[str]] | None = None, calls: str = "") -> Callable[[Body], Body]:
        """Declare ``kind``; the decorated function is its body (returned unchanged)."""
        if kind in self._specs:
            raise GraphError(f"{self.name}: stage kind {kind!r} declared twice")

        def register(body: Body) -> Body:
            self._specs[kind] = StageSpec(
                kind=kind, queue=Queue(queue), depends_on=tuple(depends_on), inputs=tuple(inputs),
                config=tuple(tuple(k) for k in config), body=body, fan_out=fan_out, artefacts=dict(artefacts or {}),
                optional=optional, devices=devices or (lambda config: []), calls=calls)
            self._checked = False
            return body

        return register

    def add(self, spec: StageSpec) -> StageSpec:
        """Register a ready-made spec (tests build one-off graphs this way)."""
        if spec.kind in self._specs:
            raise GraphError(f"{self.name}: stage kind {spec.kind!r} declared twice")
        self._specs[spec.kind] = spec
        self._checked = False
        return spec

    # -- checking ----------------------------------------------------------------------------

    def check(self) -> StageGraph:
        """Every dependency and input exists, no cycle, every input is upstream of its reader,
        every kind has a body, a required stage never waits for an optional one. Orders the
        kinds topologically (declaration order among independent ones). Raises :class:`GraphError`
        with a one-line message."""
        specs = self._specs
        for spec in specs.values():
            if spec.body is None:
                raise GraphError(f"{self.name}: stage {spec.kind} has no body")
            for dep in spec.depends_on:
                if dep not in specs:
                    raise GraphError(f"{self.name}: stage {spec.kind} depends on {dep!r}, which is not declared")
                if specs[dep].optional and not spec.optional:
                    raise GraphError(f"{self.name}: required stage {spec.kind} depends on optional stage {dep}")
        order = self._topological()
        for spec in specs.values():
            upstream = self._upstream(spec.kind)
            for name in spec.inputs:
                if name not in specs:
                    raise GraphError(f"{self.name}: stage {spec.kind} reads input {name!r}, which is not declared")
                if name not in upstream:
                    raise GraphError(f"{self.name}: stage {spec.kind} reads input {name!r}, which is not upstream "
                                     f"of it (add it to depends_on or to a dependency's)")
        self._specs = {k: specs[k] for k in order}
        self._checked = True
        return self

    def _topological(self) -> list[str]:
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        order: list[str] = []

        def visit(kind: str, path: list[str]) -> None:
            if state.get(kind) == 2:
                return
            if state.get(kind) == 1:
                cycle = path[path.index(kind):] + [kind]
                raise GraphError(f"{self.name}: dependency cycle {' → '.join(cycle)}")
            state[kind] = 1
            for dep in self._specs[kind].depends_on:
                visit(dep, [*path, kind])
            state[kind] = 2
            order.append(kind)

        for kind in self._specs:
            visit(kind, [])
        return order

    def _upstream(self, kind: str) -> set[str]:
        out: set[str] = set()
        todo = list(self._specs[kind].depends_on)
        while todo:
            k = todo.pop()
            if k not in out:
                out.add(k)
                todo.extend(self._specs[k].depends_on)
        return out

    # -- reading -----------------------------------------------------------------------------

    def _ready(self) -> dict[str, StageSpec]:
        if not self._checked:
            self.check()
        return self._specs

    def __getitem__(self, kind: str) -> StageSpec:
        specs = self._ready()
        if kind not in specs:
            raise GraphError(f"{self.name}: no stage kind {kind!r}")
        return specs[kind]

    def get(self, kind: str) -> StageSpec | None:
        return self._ready().get(kind)

    def __contains__(self, kind: object) -> bool:
        return kind in self._ready()

    def __iter__(self) -> Iterator[StageSpec]:
        return iter(self._ready().values())

    @property
    def required(self) -> tuple[StageSpec, ...]:
        """The stages every pipeline gets, in pipeline order."""
        return tuple(s for s in self if not s.optional)

    @property
    def optional(self) -> tuple[StageSpec, ...]:
        return tuple(s for s in self if s.optional)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The required kinds in pipeline order (a pipeline's stage rows)."""
        return tuple(s.kind for s in self.required)

    @property
    def fan_out_kinds(self) -> tuple[str, ...]:
        return tuple(s.kind for s in self if s.fan_out is not None)

    def downstream_of(self, kind: str) -> list[str]:
        """``kind`` and every stage that depends on it, directly or not, in pipeline order."""
        out = {kind}
        for spec in self:  # topologically ordered
            if out.intersection(spec.depends_on):
                out.add(spec.kind)
        return [s.kind for s in self if s.kind in out]


__all__ = ["Queue", "GraphError", "FanOut", "StageSpec", "StageGraph",
           "DEFAULT_ARTEFACTS"]
