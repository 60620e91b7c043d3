// fusion-search web page: the entry module. Plain JS, native ES modules, no build step, no
// dependencies. All text from the API is written with textContent, never parsed as HTML.
// Each panel module wires its own controls when imported.

import "./image.js";
import "./composed.js";
import "./upload.js";
import "./actions.js";
import "./ask.js";
import { sessionKey } from "./api.js";
import { els } from "./dom.js";
import { loadInfo } from "./info.js";
import { browse, textSearch } from "./search.js";

// side panels start folded on a narrow screen, so the results come first
if (window.matchMedia && window.matchMedia("(max-width: 860px)").matches) {
  for (const d of document.querySelectorAll(".tools details")) d.open = false;
}
if (sessionKey) els.apiKey.placeholder = "saved (hidden)";

(async () => {
  const info = await loadInfo();
  if (info) els.rerank.checked = Boolean(info.has_fusion);
  let initial = "";
  try { initial = new URL(window.location.href).searchParams.get("q") || ""; } catch { /* */ }
  if (initial.trim()) {
    els.q.value = initial;
    textSearch(initial.trim());
  } else {
    browse();
  }
  document.body.dataset.ready = "true";
})();
