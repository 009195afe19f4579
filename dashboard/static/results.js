// Results page: the per-video table sorts by any column (worst first, again to reverse) and
// each strip shows the second its slider picks (one row of the video's sprite sheet).
(function () {
  "use strict";

  function sortTable(table, th) {
    const body = table.tBodies[0];
    const key = th.dataset.key;
    const numeric = th.dataset.sort === "num";
    const lowerBetter = th.dataset.lowerBetter === "1";
    // first click: worst first (lowest, or highest where lower is better); next click reverses
    const worstFirst = th.dataset.order !== "worst";
    table.querySelectorAll("th[data-sort]").forEach((h) => { delete h.dataset.order; h.removeAttribute("aria-sort"); });
    th.dataset.order = worstFirst ? "worst" : "best";
    const ascending = numeric ? (worstFirst !== lowerBetter) : worstFirst;
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const value = (row) => {
      if (!numeric) return row.dataset.video || "";
      const cell = row.querySelector(`td[data-key="${key}"]`);
      return cell && cell.dataset.value !== "" ? parseFloat(cell.dataset.value) : null;
    };
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = value(a), y = value(b);
      if (x === null || y === null) return (x === null) - (y === null); // undefined values last
      const c = numeric ? x - y : String(x).localeCompare(String(y));
      return ascending ? c : -c;
    });
    rows.forEach((r) => body.appendChild(r));
  }

  document.querySelectorAll("table.sortable").forEach((table) => {
    table.querySelectorAll("th[data-sort]").forEach((th) => {
      th.classList.add("sort-head");
      th.tabIndex = 0;
      th.addEventListener("click", () => sortTable(table, th));
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sortTable(table, th); });
    });
    const initial = table.querySelector('th[data-key="sta-cc"]'); // the server's order: worst STA CC first
    if (initial) { initial.dataset.order = "worst"; initial.setAttribute("aria-sort", "ascending"); }
  });

  function showSecond(input) {
    const card = input.closest(".strip-card");
    const img = card.querySelector(".strip-view img");
    const i = parseInt(input.value, 10);
    img.style.transform = `translateY(-${i * parseInt(img.dataset.rowHeight, 10)}px)`;
    card.querySelector("output").textContent = input.dataset.seconds.split(",")[i];
  }

  // sizes from data attributes: the CSP allows no inline style attributes, but the CSSOM is fine
  document.querySelectorAll(".strip-view").forEach((view) => {
    view.style.width = `${view.dataset.width}px`;
    view.style.height = `${view.dataset.height}px`;
  });
  document.querySelectorAll(".strip-labels").forEach((labels) => {
    labels.style.gridTemplateColumns = `repeat(${labels.dataset.columns}, ${labels.dataset.panelWidth}px)`;
  });

  document.querySelectorAll("input.strip-second").forEach((input) => {
    input.addEventListener("input", () => showSecond(input));
    showSecond(input);
  });
})();
