"""The package layering, read from the source with ``ast`` (every import, lazy ones inside functions too).

Arrows point down only: ``dashboard`` and ``worker`` use ``db``, ``sta_models`` and
``stapipe_settings``; ``db`` uses only ``stapipe_settings``; ``sta_models`` and ``stapipe_settings``
use none of the others, so the ML library runs without Celery, Flask or a database.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level modules it must never import
FORBIDDEN: dict[str, set[str]] = {
    "sta_models": {"worker", "dashboard", "db", "stapipe_settings", "celery", "kombu", "flask", "sqlalchemy",
                   "alembic", "redis"},
    "db": {"worker", "dashboard"},
    "stapipe_settings": {"worker", "dashboard", "db", "sta_models"},
}


def imported_tops(path: Path) -> dict[str, int]:
    """Top-level module name -> first line that imports it (absolute imports only)."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for top, line in imported_tops(path).items():
            if top in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_above_it(package: str) -> None:
    assert (ROOT / package / "__init__.py").is_file()
    assert violations(package) == []


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    """An import inside a function counts: that was how ``db/`` reached up into ``worker`` before."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from worker.settings import get_settings\n    import flask.json\n")
    assert imported_tops(src) == {"worker": 2, "flask": 3}
