// The web console's only script (docs/console.md): refreshes the approvals list.
// Served from 'self' under a Content-Security-Policy without inline script; the
// list is server-rendered and escaped HTML, as on first load.
"use strict";
(function () {
  const box = document.querySelector("[data-poll]");
  if (!box) return;
  let last = box.innerHTML;
  async function refresh() {
    // Not while a button is pressed or the page is hidden.
    if (document.hidden || box.contains(document.activeElement)) return;
    const response = await fetch(box.dataset.poll, { credentials: "same-origin", cache: "no-store" });
    if (response.redirected || response.status === 401) { window.location.reload(); return; }
    if (!response.ok) return;
    const html = await response.text();
    if (html !== last) { box.innerHTML = html; last = html; }
  }
  window.setInterval(() => { refresh().catch(() => {}); }, 3000);
})();
