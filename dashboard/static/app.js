// Small helpers shared by every page: confirmation prompts for dangerous forms (no inline
// handlers: the Content-Security-Policy allows scripts from our own files only).
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) event.preventDefault();
});

window.stapipe = {
  csrf: () => document.querySelector('meta[name="csrf-token"]')?.content || "",
  // Poll a JSON URL: slower while the page is hidden; the callback returns false to stop,
  // "again" to fetch again at once (catching up on a long history).
  poll(url, onData, intervalMs = 2000) {
    let stopped = false;
    const tick = async () => {
      if (stopped) return;
      try {
        const res = await fetch(typeof url === "function" ? url() : url, {
          headers: { Accept: "application/json" }, credentials: "same-origin",
        });
        if (res.status === 401) { stopped = true; return; }
        const verdict = res.ok ? await onData(await res.json()) : true;
        if (verdict === false) { stopped = true; return; }
        if (verdict === "again") { setTimeout(tick, 0); return; }
      } catch (err) { /* network hiccup: try again later */ }
      const delay = document.visibilityState === "hidden" ? intervalMs * 5 : intervalMs;
      setTimeout(tick, delay);
    };
    tick();
    return () => { stopped = true; };
  },
};
