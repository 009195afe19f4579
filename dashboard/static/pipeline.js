// Pipeline page: poll the API and reload when any stage changes state (cheap, keeps markup simple;
// the browser restores the scroll position on reload).
"use strict";
(() => {
  const live = document.getElementById("live");
  if (!live) return;
  const terminal = new Set(["succeeded", "failed", "cancelled"]);
  const signature = (p) => p.status + "|" + Object.keys(p.unserved_queues || {}).join("+") + "|" + p.stages.map((s) => `${s.id}:${s.status}:${s.attempts}:${s.progress.done}`).join(",");
  let first = null;
  window.stapipe.poll(live.dataset.pipelineUrl, (p) => {
    const sig = signature(p);
    if (first === null) { first = sig; }
    else if (sig !== first) { window.location.reload(); return false; }
    return !(terminal.has(p.status) && terminal.has(live.dataset.status));
  }, 3000);
})();
