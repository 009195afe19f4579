"""The worker package's import graph: no cycle between its modules (lazy and type-only imports
count too), and the stage registry reads without the database, Celery or torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(package: str) -> dict[str, set[str]]:
    """Module → the modules of ``package`` it imports anywhere in its source."""
    graph: dict[str, set[str]] = {}
    for f in sorted((ROOT / package).glob("*.py")):
        name = package if f.stem == "__init__" else f"{package}.{f.stem}"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == package:
                    deps |= {f"{package}.{a.name}" for a in node.names}
                elif node.module.startswith(f"{package}."):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith(f"{package}.")}
        graph[name] = deps - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> list[str] | None:
        if state.get(m) == 2:
            return None
        if state.get(m) == 1:
            return [*path[path.index(m):], m]
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            found = visit(d, [*path, m])
            if found:
                return found
        state[m] = 2
        return None

    for m in graph:
        found = visit(m, [])
        if found:
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_worker_modules() -> None:
    graph = _imports("worker")
    assert "worker.stage_runner" in graph and graph["worker.tasks"]  # the parser saw the package
    assert _cycle(graph) is None, " → ".join(_cycle(graph) or [])


def test_state_modules_never_import_the_layers_above_them() -> None:
    """Stage state, fan-out and pipeline state are below orchestration and the task layer."""
    graph = _imports("worker")
    above = {"worker.orchestration", "worker.tasks", "worker.maintenance", "worker.commands"}
    for low in ("worker.stage_graph", "worker.stage_context", "worker.stages", "worker.artefacts",
                "worker.fanout", "worker.pipeline_state", "worker.dispatch", "worker.stage_runner"):
        assert not graph[low] & above, (low, graph[low] & above)


def test_the_stage_registry_loads_without_db_celery_or_torch() -> None:
    code = ("import sys, worker.stages; "
            "bad = [m for m in ('torch', 'celery', 'db.models', 'sqlalchemy') if m in sys.modules]; "
            "print(len(worker.stages.GRAPH.kinds), bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["13", "[]"], out.stdout + out.stderr
