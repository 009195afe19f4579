// Stage page: live per-epoch curves (uPlot), epoch table and log tail, all by polling the JSON API
// with "since epoch N" / "from byte offset B". New points never reset a zoom the user has set.
"use strict";
(() => {
  const TERMINAL = new Set(["succeeded", "failed", "cancelled", "reused"]);
  const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
  const BASE_COLS = ["train_loss", "val_loss", "val_accuracy", "lr", "seconds"];
  const TABLE_MAX = 1000;

  const curves = document.getElementById("curves");
  if (!curves) return;
  const state = { epochs: [], since: 0, status: curves.dataset.status, extraKeys: [] };
  const charts = {};
  window.stapipeCharts = charts; // for people poking in the console, and for the browser test

  // ---- status ----------------------------------------------------------------------------
  // Same formats as the server's `time` and `duration` template filters.
  function formatTime(iso) {
    return iso ? iso.slice(0, 19).replace("T", " ") + " UTC" : "–";
  }
  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    let s = Math.round(seconds);
    if (s < 60) return `${s}s`;
    let m = Math.floor(s / 60); s %= 60;
    if (m < 60) return `${m}m ${String(s).padStart(2, "0")}s`;
    const h = Math.floor(m / 60); m %= 60;
    return `${h}h ${String(m).padStart(2, "0")}m`;
  }

  function setTiming(startedAt, durationS) {
    const started = document.getElementById("stage-started");
    if (started) started.textContent = formatTime(startedAt);
    const duration = document.getElementById("stage-duration");
    if (duration) duration.textContent = formatDuration(durationS);
  }

  function setStatus(status, attempts, progress, worker) {
    const badge = document.querySelector("#stage-status .badge");
    if (badge && badge.dataset.status !== status) {
      badge.className = `badge st-${status}`;
      badge.dataset.status = status;
      badge.textContent = status;
      if (TERMINAL.has(status) && !TERMINAL.has(state.status)) showFinished(status);
    }
    state.status = status;
    curves.dataset.status = status;
    const host = document.getElementById("stage-worker");
    if (host && worker) host.textContent = worker;
    const att = document.getElementById("stage-attempts");
    if (att && attempts !== undefined) att.textContent = attempts;
    const prog = document.getElementById("stage-progress");
    if (prog && progress && progress.text) prog.textContent = progress.text;
  }

  function showFinished(status) {
    if (document.getElementById("finished-note")) return;
    const note = document.createElement("div");
    note.id = "finished-note";
    note.className = "flash " + (status === "succeeded" ? "" : "error");
    note.append(`The stage ${status}. `);
    const a = document.createElement("a");
    a.href = window.location.pathname;
    a.textContent = "Reload to see its artefacts" + (status === "failed" || status === "cancelled" ? " and re-run it" : "");
    note.append(a);
    curves.before(note);
  }

  // ---- charts ----------------------------------------------------------------------------
  // One chart per scale: losses (log scale on demand), 0-1 scores, NSS, KLD, anything else.
  // NaN counters ("*_nan_frames") go to the epoch table only. Zoom is shared by every chart.
  const UNIT = /^(val_accuracy|extra\.(cc|sim|auc.*|s_?auc|top\d+|acc.*))$/;
  const GROUPS = [
    { id: "chart-loss", title: "Loss", y: "loss", log: true, match: (k) => k === "train_loss" || k === "val_loss" },
    { id: "chart-metrics", title: "Validation scores (0–1)", y: "score", match: (k) => UNIT.test(k) },
    { id: "chart-nss", title: "Validation NSS", y: "NSS", match: (k) => k === "extra.nss" },
    { id: "chart-kld", title: "Validation KLD", y: "KLD (lower is better)", match: (k) => k === "extra.kld" },
    { id: "chart-other", title: "Other validation values", y: "value",
      match: (k) => k.startsWith("extra.") && !isCounter(k) && !["extra.nss", "extra.kld"].includes(k) && !UNIT.test(k) },
  ];
  const chartBox = curves.querySelector(".charts");
  const logToggle = document.getElementById("log-scale");
  let syncing = false;

  function isCounter(k) { return /_nan_frames$|_count$|^extra\.n_/.test(k); }

  function allKeys() {
    return ["train_loss", "val_loss", "val_accuracy", ...state.extraKeys.map((x) => "extra." + x)];
  }

  function seriesKeys(group) {
    return allKeys().filter((k) => group.match(k) && state.epochs.some((e) => value(e, k) !== null));
  }

  function value(e, key) {
    const v = key.startsWith("extra.") ? e.extra[key.slice(6)] : e[key];
    return typeof v === "number" && Number.isFinite(v) ? v : null;
  }

  function chartData(keys) {
    return [state.epochs.map((e) => e.epoch), ...keys.map((k) => state.epochs.map((e) => value(e, k)))];
  }

  // The epoch best.pt was taken from: best val CC for STA, best val top-1 for the branches.
  function bestEpoch() {
    const key = state.extraKeys.includes("cc") ? "extra.cc" : "val_accuracy";
    let best = null, bestV = -Infinity;
    for (const e of state.epochs) {
      const v = value(e, key);
      if (v !== null && v > bestV) { bestV = v; best = e.epoch; }
    }
    return best === null ? null : { epoch: best, key: key === "val_accuracy" ? "accuracy" : key.slice(6).toUpperCase(), value: bestV };
  }

  function bestPlugin() {
    return { hooks: { draw: [(u) => {
      const best = bestEpoch();
      if (!best) return;
      const x = Math.round(u.valToPos(best.epoch, "x", true));
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
      const ctx = u.ctx;
      ctx.save();
      ctx.strokeStyle = "#059669"; ctx.setLineDash([4, 4]); ctx.lineWidth = 1.5;
      ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
      ctx.setLineDash([]); ctx.fillStyle = "#059669"; ctx.font = `${11 * devicePixelRatio}px sans-serif`;
      ctx.textBaseline = "top";
      const label = `best ${best.epoch}`;
      const right = x + 4 + ctx.measureText(label).width <= u.bbox.left + u.bbox.width;
      ctx.textAlign = right ? "left" : "right";
      ctx.fillText(label, right ? x + 4 : x - 4, u.bbox.top + 2 * devicePixelRatio);
      ctx.restore();
    }] } };
  }

  // Integer epochs only on the x axis (no 2.5); at most ~10 ticks.
  const EPOCH_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000];
  function epochTicks(u, vals) { return vals.map((v) => (Number.isInteger(v) ? String(v) : "")); }
  // As many decimals as the tick spacing needs (1.8246/1.8248 must not both read "1.82").
  function yTicks(u, vals) {
    const finite = vals.filter((v) => v !== null && Number.isFinite(v));
    const step = finite.length > 1 ? Math.abs(finite[1] - finite[0]) : Math.abs(finite[0] || 1);
    const decimals = Math.min(8, Math.max(0, -Math.floor(Math.log10(step || 1))));
    return vals.map((v) => (v === null ? "" : fmtTick(v, decimals)));
  }
  function fmtTick(v, decimals) {
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e5 || (a < 1e-4 && decimals > 6)) return v.toExponential(1);
    return v.toFixed(decimals);
  }

  // Room for the longest tick label plus the axis title (long labels overlapped the title).
  function yAxisSize(u, values) {
    const longest = values ? Math.max(0, ...values.map((v) => String(v).length)) : 4;
    return Math.max(48, longest * 7 + 30);
  }

  // Each chart as wide as its grid cell (a chart made while its cell was hidden is not).
  function fitCharts() {
    for (const [id, chart] of Object.entries(charts)) {
      const el = document.getElementById(id);
      const width = Math.max(280, el.clientWidth - 16);
      if (Math.abs(chart.width - width) > 2) chart.setSize({ width, height: 240 });
    }
  }

  function syncZoom(u) {
    if (syncing) return;
    syncing = true;
    for (const other of Object.values(charts)) {
      if (other !== u && other.scales.x.min !== u.scales.x.min) {
        other.setScale("x", { min: u.scales.x.min, max: u.scales.x.max });
      }
    }
    syncing = false;
  }

  function chartEl(group) {
    let el = document.getElementById(group.id);
    if (!el) {
      el = document.createElement("div");
      el.className = "chart";
      el.id = group.id;
      chartBox.append(el);
    }
    return el;
  }

  function makeChart(el, group, keys) {
    el.innerHTML = "";
    const log = group.log && logToggle && logToggle.checked;
    const opts = {
      title: group.title + (log ? " (log scale)" : ""),
      width: Math.max(280, el.clientWidth || 480),
      height: 240,
      scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
      cursor: { drag: { x: true, y: false, setScale: true }, sync: { key: "stage-" + curves.dataset.metricsUrl } },
      axes: [{ label: "epoch", incrs: EPOCH_INCRS, values: epochTicks },
             { label: group.y, values: yTicks, size: yAxisSize }],
      series: [{ label: "epoch" }, ...keys.map((k, i) => ({
        label: k.replace("extra.", ""), stroke: COLORS[i % COLORS.length], width: 2,
        points: { show: state.epochs.length < 60 }, spanGaps: true,
        value: (u, v) => (v === null || v === undefined ? "–" : fmt(v)),
      }))],
      plugins: [bestPlugin()],
      hooks: { setScale: [(u, key) => { if (key === "x") syncZoom(u); }] },
    };
    const chart = new uPlot(opts, chartData(keys), el);
    chart._keys = keys.join(",") + (log ? "|log" : "");
    return chart;
  }

  function isZoomed(chart) {
    const xs = chart.scales.x, d = chart.data[0];
    if (!d || d.length < 2 || xs.min == null) return false;
    return xs.min > d[0] + 1e-9 || xs.max < d[d.length - 1] - 1e-9;
  }

  function renderCharts() {
    for (const group of GROUPS) {
      const keys = seriesKeys(group);
      if (!keys.length) continue;
      const el = chartEl(group);
      const sig = keys.join(",") + (group.log && logToggle && logToggle.checked ? "|log" : "");
      let chart = charts[el.id];
      if (!chart || chart._keys !== sig) {
        const zoom = chart && isZoomed(chart) ? { min: chart.scales.x.min, max: chart.scales.x.max } : null;
        if (chart) chart.destroy();
        chart = charts[el.id] = makeChart(el, group, keys);
        if (zoom) chart.setScale("x", zoom);
        continue;
      }
      // Zoomed in: keep the user's x/y ranges (resetScales=false). Otherwise rescale to fit.
      chart.setData(chartData(keys), !isZoomed(chart));
    }
    requestAnimationFrame(fitCharts);
    curves.dataset.points = String(state.epochs.length);
    const best = bestEpoch();
    curves.dataset.bestEpoch = best ? String(best.epoch) : "";
    const bestNote = document.getElementById("best-epoch");
    if (bestNote) bestNote.textContent = best ? `best epoch ${best.epoch} (val ${best.key} ${fmt(best.value)})` : "";
    document.getElementById("no-epochs").hidden = state.epochs.length > 0;
    document.getElementById("epoch-count").textContent = state.epochs.length ? `(${state.epochs.length} epochs)` : "";
  }

  if (logToggle) logToggle.addEventListener("change", renderCharts);

  window.addEventListener("resize", fitCharts);

  // ---- epoch table -----------------------------------------------------------------------
  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (Math.abs(v) >= 1000 || (Math.abs(v) < 0.001 && v !== 0)) return v.toExponential(3);
    return Number.isInteger(v) ? String(v) : v.toFixed(4);
  }

  function renderTable(newRows, rebuild) {
    const table = document.getElementById("epoch-table");
    const cols = ["epoch", ...BASE_COLS, ...state.extraKeys.map((k) => "extra." + k)];
    const body = table.tBodies[0];
    if (rebuild) {
      const tr = document.createElement("tr");
      for (const c of cols) { const th = document.createElement("th"); th.textContent = c.replace("extra.", ""); tr.append(th); }
      table.tHead.replaceChildren(tr);
      body.replaceChildren();
      newRows = state.epochs;
    }
    const frag = document.createDocumentFragment();
    for (const e of newRows.slice(-TABLE_MAX)) {
      const tr = document.createElement("tr");
      tr.dataset.epoch = e.epoch;
      for (const c of cols) {
        const td = document.createElement("td");
        td.className = "num";
        td.textContent = c === "epoch" ? e.epoch : fmt(value(e, c));
        tr.append(td);
      }
      frag.append(tr);
    }
    body.append(frag);
    while (body.rows.length > TABLE_MAX) body.deleteRow(0);
  }

  function addEpochs(rows) {
    if (!rows.length) return;
    let newKeys = false;
    for (const e of rows) {
      for (const k of Object.keys(e.extra || {})) {
        if (!state.extraKeys.includes(k)) { state.extraKeys.push(k); newKeys = true; }
      }
    }
    const first = state.epochs.length === 0;
    state.epochs.push(...rows);
    state.since = rows[rows.length - 1].epoch;
    renderTable(rows, first || newKeys);
    renderCharts();
    const best = bestEpoch();
    for (const tr of document.querySelectorAll("#epoch-table tbody tr")) {
      tr.classList.toggle("best", best !== null && tr.dataset.epoch === String(best.epoch));
    }
  }

  const metricsUrl = () => `${curves.dataset.metricsUrl}?since=${state.since}&limit=5000`;
  window.stapipe.poll(metricsUrl, async (body) => {
    addEpochs(body.epochs);
    setStatus(body.status, body.attempts, body.progress, body.worker_host);
    setTiming(body.started_at, body.duration_s);
    // Catch up at once on long histories; otherwise stop after the stage has finished.
    if (body.more) return "again";
    return !TERMINAL.has(body.status);
  }, 2000);

  // ---- log tail --------------------------------------------------------------------------
  const logSection = document.getElementById("log-section");
  const logEl = document.getElementById("log");
  let logOffset = null;
  const LOG_MAX_CHARS = 400000;
  const logUrl = () => logOffset === null ? `${logSection.dataset.logUrl}?lines=300`
    : `${logSection.dataset.logUrl}?offset=${logOffset}`;
  window.stapipe.poll(logUrl, (body) => {
    if (!body.exists) return !TERMINAL.has(body.status);
    const atBottom = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 8;
    if (logOffset === null) logEl.textContent = body.text;
    else if (body.text) logEl.textContent += body.text;
    if (logEl.textContent.length > LOG_MAX_CHARS) logEl.textContent = logEl.textContent.slice(-LOG_MAX_CHARS);
    logOffset = body.next_offset;
    if (atBottom) logEl.scrollTop = logEl.scrollHeight;
    return !(TERMINAL.has(body.status) && body.next_offset >= body.size);
  }, 2000);
})();
