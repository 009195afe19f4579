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
