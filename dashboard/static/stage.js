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
  function seriesKeys(el) {
    const keys = [];
    for (const k of el.dataset.series.split(",")) {
      if (k === "*extra") keys.push(...state.extraKeys.map((x) => "extra." + x));
      else keys.push(k);
    }
    return keys.filter((k) => state.epochs.some((e) => value(e, k) !== null));
  }

  function value(e, key) {
    const v = key.startsWith("extra.") ? e.extra[key.slice(6)] : e[key];
    return typeof v === "number" && Number.isFinite(v) ? v : null;
  }

  function chartData(keys) {
    return [state.epochs.map((e) => e.epoch), ...keys.map((k) => state.epochs.map((e) => value(e, k)))];
  }

  function makeChart(el, keys) {
    el.innerHTML = "";
    const opts = {
      title: el.dataset.title,
      width: Math.max(280, el.clientWidth || 480),
      height: 260,
      scales: { x: { time: false } },
      cursor: { drag: { x: true, y: false, setScale: true } },
      axes: [{ label: "epoch" }, {}],
      series: [{ label: "epoch" }, ...keys.map((k, i) => ({
        label: k.replace("extra.", ""), stroke: COLORS[i % COLORS.length], width: 2,
        points: { show: state.epochs.length < 60 }, spanGaps: true,
      }))],
    };
    const chart = new uPlot(opts, chartData(keys), el);
    chart._keys = keys.join(",");
    return chart;
  }

  function isZoomed(chart) {
    const xs = chart.scales.x, d = chart.data[0];
    if (!d || d.length < 2 || xs.min == null) return false;
    return xs.min > d[0] + 1e-9 || xs.max < d[d.length - 1] - 1e-9;
  }

  function renderCharts() {
    for (const el of curves.querySelectorAll(".chart")) {
      const keys = seriesKeys(el);
      if (!keys.length) continue;
      let chart = charts[el.id];
      if (!chart || chart._keys !== keys.join(",")) {
        if (chart) chart.destroy();
        charts[el.id] = makeChart(el, keys);
        continue;
      }
      // Zoomed in: keep the user's x/y ranges (resetScales=false). Otherwise rescale to fit.
      chart.setData(chartData(keys), !isZoomed(chart));
    }
    curves.dataset.points = String(state.epochs.length);
    document.getElementById("no-epochs").hidden = state.epochs.length > 0;
    document.getElementById("epoch-count").textContent = state.epochs.length ? `(${state.epochs.length} epochs)` : "";
  }

  window.addEventListener("resize", () => {
    for (const [id, chart] of Object.entries(charts)) {
      const el = document.getElementById(id);
      chart.setSize({ width: Math.max(280, el.clientWidth), height: 260 });
    }
  });

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
