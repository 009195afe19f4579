// Stage page previews: per video, a slider over its seconds swaps every branch's image and caption.
"use strict";
(() => {
  for (const box of document.querySelectorAll(".preview-video")) {
    const data = JSON.parse(box.querySelector(".preview-data").textContent);
    const slider = box.querySelector(".second-slider");
    const out = box.querySelector(".second-value");
    const show = () => {
      const sec = data.seconds[Number(slider.value)];
      out.textContent = String(sec);
      box.dataset.second = String(sec);
      for (const fig of box.querySelectorAll("figure[data-column]")) {
        const item = (data.columns[fig.dataset.column] || {})[String(sec)];
        const img = fig.querySelector("img"), link = fig.querySelector("a"), cap = fig.querySelector("figcaption");
        if (item) { img.src = item.url; img.alt = item.caption; img.hidden = false; link.href = item.url; cap.textContent = item.caption; }
        else { img.hidden = true; cap.textContent = `${fig.dataset.column} · no preview at second ${sec}`; }
      }
    };
    slider.addEventListener("input", show);
  }
})();
