// New pipeline form: changing the preset refills every per-stage setting with that preset's values.
"use strict";
(() => {
  const data = JSON.parse(document.getElementById("presets-data").textContent);
  const select = document.getElementById("preset");
  select.addEventListener("change", () => {
    const values = data[select.value];
    if (!values) return;
    for (const el of document.querySelectorAll("[data-setting]")) {
      if (el.name in values) {
        el.value = values[el.name];
        el.classList.remove("invalid");
      }
    }
  });
})();

// Disk estimate: ask the API (GET /api/v1/estimate) whenever the dataset, preset or a setting changes.
(() => {
  const out = document.getElementById("disk-estimate");
  const form = out && out.closest("form");
  if (!form) return;
  const size = (n) => {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
  };
  let timer = null;
  let seq = 0;
  const update = async () => {
    const root = form.elements["dataset_root"].value.trim();
    if (!root) { out.textContent = "Disk estimate: enter a dataset folder."; return; }
    const overrides = {};
    for (const el of form.querySelectorAll("[data-setting]")) overrides[el.name] = el.value;
    const q = new URLSearchParams({dataset_root: root, preset: form.elements["preset"].value,
                                   overrides: JSON.stringify(overrides)});
    const mine = ++seq;
    try {
      const res = await fetch(`${out.dataset.url}?${q}`, {credentials: "same-origin", headers: {Accept: "application/json"}});
      const body = await res.json();
      if (mine !== seq) return;
      if (!res.ok) {
        const first = body.fields ? Object.entries(body.fields)[0] : null;
        out.textContent = "Disk estimate: " + (first ? `${first[0]}: ${first[1]}` : (body.message || res.statusText));
        out.dataset.bytes = "";
        return;
      }
      const top = Object.entries(body.stages).sort((a, b) => b[1] - a[1]).slice(0, 3)
        .map(([k, v]) => `${k} ${size(v)}`).join(", ");
      out.textContent = `Disk estimate: ${size(body.bytes)} for ${body.dataset.videos} videos ` +
        `(${body.dataset.video_seconds} s), largest: ${top}.`;
      out.dataset.bytes = String(body.bytes);
    } catch (err) {
      if (mine === seq) out.textContent = "Disk estimate: unavailable.";
    }
  };
  const later = () => { clearTimeout(timer); timer = setTimeout(update, 300); };
  form.addEventListener("input", later);
  form.addEventListener("change", later);
  update();
})();
