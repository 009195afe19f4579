"""docs/architecture.md's stage table is the one the registry generates."""

from __future__ import annotations

from worker.stage_docs import BEGIN, END, generated_block
from worker.stages import GRAPH

from .conftest import ROOT


def test_the_docs_table_matches_the_registry() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert text.count(BEGIN) == text.count(END) == 1
    block = text[text.index(BEGIN):text.index(END) + len(END)]
    assert block == generated_block(GRAPH), "docs/architecture.md: stage table out of date; run python -m worker.stage_docs"
    for spec in GRAPH:
        assert f"| `{spec.kind}`" in block
