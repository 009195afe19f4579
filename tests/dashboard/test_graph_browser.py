"""The pipeline page's stage graph in Chromium: one arrow per dependency (16 for the 13 stages),
each from its source node's right edge to its target node's left edge, whatever row the nodes sit
in (a column of three training stages used to get one arrow, in its middle). Screenshot:
``test-artifacts/pipeline-graph.png``."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from stapipe_settings import Settings
from worker.stages import GRAPH

from .browser_stack import logged_in_page
from .conftest import make_pipeline
from .test_commands import server  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser]

EDGE_JS = """() => [...document.querySelectorAll('#graph svg.graph-edges path.graph-edge')].map(p => {
  const len = p.getTotalLength(), a = p.getPointAtLength(0), b = p.getPointAtLength(len);
  const o = p.ownerSVGElement.getBoundingClientRect();
  return {from: p.dataset.from, to: p.dataset.to, x0: a.x + o.left, y0: a.y + o.top, x1: b.x + o.left,
          y1: b.y + o.top, marker: p.getAttribute('marker-end')};
})"""
BOX_JS = """() => Object.fromEntries([...document.querySelectorAll('#graph .node')].map(n => {
  const r = n.getBoundingClientRect(); return [n.dataset.kind, [r.left, r.top, r.right, r.bottom]];
}))"""


def test_every_dependency_has_an_arrow(server: str, session: Session, settings: Settings,  # noqa: F811
                                      artifacts_dir: Path) -> None:
    p = make_pipeline(session, settings, statuses={"extract": "succeeded", "train_s_coarse": "succeeded",
                                                   "train_sa_coarse": "running", "train_st_coarse": "queued"})
    expected = {(dep, s.kind) for s in GRAPH.required for dep in s.depends_on}
    assert len(expected) == 16
    with logged_in_page(server) as page:
        page.goto(f"{server}/pipelines/{p.id}")
        page.wait_for_selector("#graph svg.graph-edges path.graph-edge", state="attached")
        page.locator("#graph").screenshot(path=str(artifacts_dir / "pipeline-graph.png"))
        fits = page.evaluate("(() => { const g = document.getElementById('graph'); return [g.scrollWidth, g.clientWidth]; })()")
        assert fits[0] <= fits[1], f"the 13 stages overflow a 1280 px window: {fits}"
        edges, boxes = page.evaluate(EDGE_JS), page.evaluate(BOX_JS)
        assert {(e["from"], e["to"]) for e in edges} == expected and len(edges) == len(expected)
        for e in edges:
            src, dst = boxes[e["from"]], boxes[e["to"]]
            where = f"{e['from']} → {e['to']}: {e}, boxes {src} {dst}"
            assert abs(e["x0"] - src[2]) <= 2 and src[1] < e["y0"] < src[3], where  # leaves the source's right
            assert abs(e["x1"] - dst[0]) <= 8 and dst[1] < e["y1"] < dst[3], where  # arrowhead at target's left
            assert e["marker"], where
        # a narrow window: the graph scrolls sideways and the arrows still meet their nodes
        page.set_viewport_size({"width": 700, "height": 900})
        page.wait_for_timeout(300)
        edges, boxes = page.evaluate(EDGE_JS), page.evaluate(BOX_JS)
        for e in edges:
            assert abs(e["x1"] - boxes[e["to"]][0]) <= 8, e
        assert page.errors == []
