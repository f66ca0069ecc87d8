// Keel dashboard: refreshes the page's <main> every `data-refresh` seconds
// in place (no full reload, no flicker), and pauses while the visitor is
// typing in a form or the tab is hidden. Everything else works without it.
"use strict";

(function () {
  const main = document.querySelector("main[data-refresh]");
  if (!main) return;
  const seconds = Number(main.dataset.refresh);
  if (!(seconds > 0)) return;

  async function refresh() {
    const busy = document.activeElement && main.contains(document.activeElement) &&
      ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (document.hidden || busy) return;
    try {
      const response = await fetch(location.href, { credentials: "same-origin", cache: "no-store" });
      // Signed out meanwhile (the session expired): show the sign-in page.
      if (response.redirected || !response.ok) { location.reload(); return; }
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.querySelector("main");
      if (fresh) {
        main.innerHTML = fresh.innerHTML;
        if (fresh.dataset.refresh) main.dataset.refresh = fresh.dataset.refresh;
        else { clearInterval(timer); delete main.dataset.refresh; }
      }
    } catch (_) {
      // The API is unreachable for a moment; the next tick tries again.
    }
  }

  const timer = setInterval(refresh, seconds * 1000);
})();
