// The header: model info chips and the API key panel.

import { API, api, askForKey, sessionKey, setSessionKey } from "./api.js";
import { els } from "./dom.js";
import { clearError, setStatus, showError } from "./messages.js";
import { rerun } from "./search.js";
import { state } from "./state.js";

function chip(text, cls) {
  const span = document.createElement("span");
  span.className = cls ? `chip ${cls}` : "chip";
  span.textContent = text;
  return span;
}

function renderInfo(info) {
  els.modelInfo.replaceChildren(
    chip(info.model),
    chip(info.trained ? "trained" : "untrained", info.trained ? "chip-ok" : "chip-warn"),
    chip(info.has_fusion ? "attention fusion" : "late fusion"),
    chip(`${info.items} ${info.items === 1 ? "item" : "items"}`),
  );
  els.modelInfo.title = `${info.model}: ${info.dim}-d embeddings, ${info.index} index, `
    + `${info.precision}, re-rank depth ${info.rerank_depth}`;
  els.modelInfo.dataset.items = String(info.items);
  els.modelInfo.dataset.trained = String(info.trained);
}

export async function loadInfo() {
  try {
    const info = await api(`${API}/info`);
    state.info = info;
    renderInfo(info);
    const auth = info.auth || {};
    if (auth.writes || auth.reads) {
      els.authNote.textContent = auth.reads
        ? "This server needs an API key to search, view and change images. It is kept in this browser only (localStorage)."
        : "This server needs an API key for uploads and deletes. It is kept in this browser only (localStorage).";
      askForKey(!sessionKey);
    }
    return info;
  } catch (err) {
    els.modelInfo.textContent = "Model info unavailable";
    showError(err, "Could not load model info");
    return null;
  }
}

els.authToggle.addEventListener("click", () => {
  const open = els.authPanel.hidden;
  els.authPanel.hidden = !open;
  els.authToggle.setAttribute("aria-expanded", String(open));
  if (open) els.apiKey.focus();
});

els.authForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  setSessionKey(els.apiKey.value.trim());
  els.apiKey.value = "";
  els.apiKey.placeholder = sessionKey ? "saved (hidden)" : "";
  clearError();
  setStatus(sessionKey ? "API key saved." : "API key cleared.");
  els.authPanel.hidden = true;
  els.authToggle.setAttribute("aria-expanded", "false");
  els.authToggle.focus();
  if (state.info && state.info.auth && state.info.auth.reads) rerun();
});

els.apiKeyForget.addEventListener("click", () => {
  setSessionKey("");
  els.apiKey.value = "";
  els.apiKey.placeholder = "";
  setStatus("API key forgotten.");
  els.apiKey.focus();
});
