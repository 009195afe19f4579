// Workers page: reload when the set of online workers or what they run changes.
"use strict";
(() => {
  const live = document.getElementById("live-workers");
  if (!live) return;
  const sig = (b) => b.items.map((w) => `${w.name}:${w.online}:${w.current_stages.map((s) => s.id).join("+")}`).join(",");
  let first = null;
  window.stapipe.poll(live.dataset.url, (b) => {
    const s = sig(b);
    if (first === null) first = s;
    else if (s !== first) { window.location.reload(); return false; }
    return true;
  }, 5000);
})();
