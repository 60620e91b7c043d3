// The error banner, the status line and the busy state of the results.

import { ApiError, sessionKey } from "./api.js";
import { els } from "./dom.js";

function sentence(text) {
  let t = String(text).trim();
  if (t && !/[.!?]$/.test(t)) t += ".";
  return t ? t.charAt(0).toUpperCase() + t.slice(1) : t;
}

export function showError(err, context) {
  let text;
  if (err instanceof ApiError) {
    text = sentence(err.message);
    if (err.status === 401) {
      text += sessionKey ? " The saved API key was refused; enter the right one above."
        : " Enter the API key above.";
    } else if (err.code === "fusion_unavailable") {
      text += " (“Why this hit” needs a model with trained fusion weights.)";
    }
    if (err.code && err.status) text += ` [${err.code}]`;
  } else {
    text = sentence(err && err.message ? err.message : String(err));
  }
  els.error.textContent = context ? `${context}: ${text}` : text;
  els.error.hidden = false;
}

export function clearError() {
  els.error.hidden = true;
  els.error.textContent = "";
}

export function setStatus(text) { els.status.textContent = text; }

let busyCount = 0;
export function busy(on) {
  busyCount = Math.max(0, busyCount + (on ? 1 : -1));
  const b = busyCount > 0;
  els.main.classList.toggle("busy", b);
  els.main.setAttribute("aria-busy", b ? "true" : "false");
  els.loadMore.disabled = b;
}
