// Pipeline page: draw one arrow per dependency between the stage graph's nodes (an SVG laid over
// the columns), from each node named in a node's data-deps to that node. Redrawn when the graph's
// size changes (window resize, fonts loading); the graph scrolls sideways on narrow windows.
"use strict";
(() => {
  const graph = document.getElementById("graph");
  if (!graph) return;
  const NS = "http://www.w3.org/2000/svg";
  const el = (name, attrs) => {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  };
  const svg = el("svg", { class: "graph-edges", "aria-hidden": "true" });
  const defs = el("defs", {});
  const marker = el("marker", { id: "graph-arrow", viewBox: "0 0 8 8", refX: "8", refY: "4", markerWidth: "7",
                                markerHeight: "7", orient: "auto-start-reverse" });
  marker.appendChild(el("path", { d: "M0,0 L8,4 L0,8 z", class: "graph-arrowhead" }));
  defs.appendChild(marker);
  svg.appendChild(defs);
  graph.prepend(svg);

  const nodes = new Map([...graph.querySelectorAll(".node")].map((n) => [n.dataset.kind, n]));
  const draw = () => {
    for (const p of svg.querySelectorAll("path.graph-edge")) p.remove();
    const origin = graph.getBoundingClientRect();
    const at = (r) => ({ left: r.left - origin.left + graph.scrollLeft, right: r.right - origin.left + graph.scrollLeft,
                         mid: (r.top + r.bottom) / 2 - origin.top + graph.scrollTop,
                         bottom: r.bottom - origin.top + graph.scrollTop });
    // as large as the nodes reach, no more: the SVG must not widen the graph's scroll area itself
    const boxes = [...nodes.values()].map((n) => at(n.getBoundingClientRect()));
    svg.setAttribute("width", Math.ceil(Math.max(0, ...boxes.map((b) => b.right))));
    svg.setAttribute("height", Math.ceil(Math.max(0, ...boxes.map((b) => b.bottom))));
    for (const [kind, node] of nodes) {
      const to = at(node.getBoundingClientRect());
      for (const dep of (node.dataset.deps || "").split(" ").filter(Boolean)) {
        const source = nodes.get(dep);
        if (!source) continue;
        const from = at(source.getBoundingClientRect());
        const bend = (to.left - from.right) / 2;
        svg.appendChild(el("path", {
          class: "graph-edge", "data-from": dep, "data-to": kind, "marker-end": "url(#graph-arrow)",
          d: `M${from.right},${from.mid} C${from.right + bend},${from.mid} ${to.left - bend},${to.mid} ${to.left},${to.mid}`,
        }));
      }
    }
  };
  draw();
  if (window.ResizeObserver) new ResizeObserver(draw).observe(graph);
  window.addEventListener("resize", draw);
})();
