// Talking to the API: fetch with the API key, errors as ApiError, the key kept in localStorage.

import { els } from "./dom.js";

export const API = "/api/v1";

const KEY_STORE = "fusion-search.apiKey";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function storedKey() {
  try { return localStorage.getItem(KEY_STORE) || ""; } catch { return ""; }
}

function storeKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
  } catch { /* storage disabled: the key lives for this page only */ }
}

export let sessionKey = storedKey();

// The key for this page and later visits; "" forgets it.
export function setSessionKey(key) {
  sessionKey = key;
  storeKey(key);
}

export async function api(path, { method = "GET", json, form, blob = false } = {}) {
  const headers = { Accept: blob ? "*/*" : "application/json" };
  if (sessionKey) headers["X-API-Key"] = sessionKey;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  let res;
  try {
    res = await fetch(path, { method, headers, body });
  } catch {
    throw new ApiError(0, "network_error", "Could not reach the server. Check that it is running.");
  }
  if (!res.ok) {
    let code = `http_${res.status}`;
    let message = res.statusText || `request failed with status ${res.status}`;
    try {
      const data = await res.json();
      if (data && data.error) {
        code = String(data.error.code || code);
        message = String(data.error.message || message);
      } else if (data && data.detail) {
        message = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      }
    } catch { /* not JSON: keep the status text */ }
    if (res.status === 401) askForKey(true);
    throw new ApiError(res.status, code, message);
  }
  return blob ? res.blob() : res.json();
}

export function askForKey(open) {
  els.authToggle.hidden = false;
  if (open) {
    els.authPanel.hidden = false;
    els.authToggle.setAttribute("aria-expanded", "true");
  }
}
