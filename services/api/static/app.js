// Small progressive enhancements; every page works without them.
"use strict";

// The subscription form previews which recent papers it would match.
const form = document.getElementById("subscription-form");
const preview = document.getElementById("preview");
if (form && preview) {
  let timer;
  const refresh = async () => {
    const data = new FormData(form);
    const params = new URLSearchParams();
    for (const field of ["categories", "query", "authors"]) params.set(field, data.get(field) || "");
    try {
      const response = await fetch(`${form.dataset.preview}?${params}`, { headers: { Accept: "text/html" } });
      if (response.ok) preview.innerHTML = await response.text();
    } catch (_) { /* the preview is a nicety; the form still works */ }
  };
  form.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(refresh, 300); });
  refresh();
}

// Fill the time zone on sign-up from the browser.
for (const input of document.querySelectorAll("[data-detect-time-zone]")) {
  if (!input.value || input.value === "UTC") {
    try { input.value = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (_) {}
  }
}

// Ask before destructive actions.
for (const f of document.querySelectorAll("form[data-confirm]")) {
  f.addEventListener("submit", (event) => { if (!confirm(f.dataset.confirm)) event.preventDefault(); });
}
