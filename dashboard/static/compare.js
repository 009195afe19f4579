// Compare page: the same stage's curves of every compared pipeline overlaid in one uPlot chart.
"use strict";
(() => {
  const dataEl = document.getElementById("compare-data");
  if (!dataEl) return;
  const data = JSON.parse(dataEl.textContent);
  const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
  const stageSel = document.getElementById("curve-stage");
  const keySel = document.getElementById("curve-key");
  const logBox = document.getElementById("curve-log");
  const el = document.getElementById("compare-chart");
  let chart = null;

  const value = (e, key) => {
    const v = key.startsWith("extra.") ? (e.extra || {})[key.slice(6)] : e[key];
    return typeof v === "number" && Number.isFinite(v) ? v : null;
  };

  function keysOf(kind) {
    const keys = new Set();
    for (const rows of Object.values(data.curves[kind] || {})) {
      for (const e of rows) {
        for (const k of ["val_loss", "train_loss", "val_accuracy"]) if (value(e, k) !== null) keys.add(k);
        for (const k of Object.keys(e.extra || {})) if (!/_nan_frames$/.test(k)) keys.add("extra." + k);
      }
    }
    return [...keys];
  }

  function fillKeys() {
    const keys = keysOf(stageSel.value);
    const prev = keySel.value;
    keySel.replaceChildren(...keys.map((k) => new Option(k.replace("extra.", "val "), k)));
    keySel.value = keys.includes(prev) ? prev : (keys.includes("extra.cc") ? "extra.cc" : keys[0] || "");
  }

  function draw() {
    const kind = stageSel.value, key = keySel.value;
    const per = data.curves[kind] || {};
    const epochs = [...new Set(Object.values(per).flatMap((rows) => rows.map((e) => e.epoch)))].sort((a, b) => a - b);
    const series = data.pipelines.map((pid) => {
      const byEpoch = new Map((per[String(pid)] || []).map((e) => [e.epoch, value(e, key)]));
      return epochs.map((ep) => (byEpoch.has(ep) ? byEpoch.get(ep) : null));
    });
    const log = logBox.checked;
    if (chart) chart.destroy();
    el.innerHTML = "";
    // the card spans its section; the chart must fit inside the card's padding and border
    const sides = (node, keys) => {
      const box = getComputedStyle(node);
      return keys.reduce((sum, k) => sum + (parseFloat(box[k]) || 0), 0);
    };
    const inner = el.parentElement.clientWidth - sides(el.parentElement, ["paddingLeft", "paddingRight"])
      - sides(el, ["paddingLeft", "paddingRight", "borderLeftWidth", "borderRightWidth"]);
    chart = new uPlot({
      title: `${kind}: ${key.replace("extra.", "val ")}` + (log ? " (log scale)" : ""),
      width: Math.max(320, inner), height: 320,
      scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
      axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500],
               values: (u, vals) => vals.map((v) => (Number.isInteger(v) ? String(v) : "")) },
             { label: key.replace("extra.", ""), size: 56 }],
      series: [{ label: "epoch" }, ...data.pipelines.map((pid, i) => ({
        label: `#${pid} ${data.names[i]}`, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
      }))],
    }, [epochs, ...series], el);
    el.dataset.series = String(data.pipelines.length);
    el.dataset.points = String(epochs.length);
    window.stapipeCompareChart = chart;
  }

  stageSel.addEventListener("change", () => { fillKeys(); draw(); });
  keySel.addEventListener("change", draw);
  logBox.addEventListener("change", draw);
  fillKeys();
  draw();
})();
