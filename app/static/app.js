// fusion-search web page. Plain JS, no build step, no dependencies.
// All text from the API is written with textContent, never parsed as HTML.
"use strict";

(() => {
  const API = "/api/v1";
  const PAGE = 24;
  const MAX_K = 1000;
  const KEY_STORE = "fusion-search.apiKey";
  // Hits under this match probability are hidden behind "show weaker matches": the threshold
  // with the best F1 of kept hits on the OOD val split (docs/search-quality.md); re-measure it
  // (python -m bench.quality_search cutoff) when the match head or its calibration changes.
  const MIN_MATCH = 0.3;

  const $ = (id) => document.getElementById(id);
  const els = {
    modelInfo: $("model-info"),
    authToggle: $("auth-toggle"),
    authPanel: $("auth-panel"),
    authForm: $("auth-form"),
    authNote: $("auth-note"),
    apiKey: $("api-key"),
    apiKeyForget: $("api-key-forget"),
    textForm: $("text-form"),
    q: $("q"),
    rerank: $("rerank"),
    searchMode: $("search-mode"),
    cutoff: $("cutoff"),
    showWeaker: $("show-weaker"),
    tagFilter: $("tag-filter"),
    browse: $("browse"),
    showDuplicates: $("show-duplicates"),
    imageForm: $("image-form"),
    imageDrop: $("image-drop"),
    imageFile: $("image-file"),
    imageTarget: $("image-target"),
    composeForm: $("compose-form"),
    composeDrop: $("compose-drop"),
    composeFile: $("compose-file"),
    composeText: $("compose-text"),
    reference: $("reference"),
    referenceImg: $("reference-img"),
    referenceLabel: $("reference-label"),
    referenceClear: $("reference-clear"),
    uploadForm: $("upload-form"),
    uploadFiles: $("upload-files"),
    uploadCaption: $("upload-caption"),
    uploadTags: $("upload-tags"),
    main: $("main"),
    error: $("error"),
    title: $("results-title"),
    status: $("status"),
    results: $("results"),
    empty: $("empty"),
    loadMore: $("load-more"),
    template: $("card-template"),
  };

  const state = {
    info: null,
    query: null, // what the grid shows: {mode: "browse"|"text"|"image"|"composed", ...}
    k: PAGE, // searches: how many hits were asked for
    offset: 0, // browsing: the next offset
    total: 0,
    shown: new Set(),
    seq: 0, // drops answers of superseded requests
    reference: null, // {id, url, caption} or {file, url}
    blobUrls: [],
    referenceBlobUrl: null,
    weak: 0, // hits under MIN_MATCH in the grid
    groups: 0, // near-duplicate groups in the grid
    showWeak: false,
  };

  // ---- API -------------------------------------------------------------------------------

  class ApiError extends Error {
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

  let sessionKey = storedKey();

  async function api(path, { method = "GET", json, form, blob = false } = {}) {
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

  // ---- messages --------------------------------------------------------------------------

  function sentence(text) {
    let t = String(text).trim();
    if (t && !/[.!?]$/.test(t)) t += ".";
    return t ? t.charAt(0).toUpperCase() + t.slice(1) : t;
  }

  function showError(err, context) {
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

  function clearError() {
    els.error.hidden = true;
    els.error.textContent = "";
  }

  function setStatus(text) { els.status.textContent = text; }

  let busyCount = 0;
  function busy(on) {
    busyCount = Math.max(0, busyCount + (on ? 1 : -1));
    const b = busyCount > 0;
    els.main.classList.toggle("busy", b);
    els.main.setAttribute("aria-busy", b ? "true" : "false");
    els.loadMore.disabled = b;
  }

  // ---- model info and API key ------------------------------------------------------------

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

  async function loadInfo() {
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

  function askForKey(open) {
    els.authToggle.hidden = false;
    if (open) {
      els.authPanel.hidden = false;
      els.authToggle.setAttribute("aria-expanded", "true");
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
    sessionKey = els.apiKey.value.trim();
    storeKey(sessionKey);
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
    sessionKey = "";
    storeKey("");
    els.apiKey.value = "";
    els.apiKey.placeholder = "";
    setStatus("API key forgotten.");
    els.apiKey.focus();
  });

  // ---- the results grid ------------------------------------------------------------------

  function tagList(raw) {
    const out = [];
    for (const part of String(raw || "").split(",")) {
      const t = part.trim().toLowerCase();
      if (t && !out.includes(t)) out.push(t);
    }
    return out;
  }

  function filterTags() { return tagList(els.tagFilter.value); }

  function setThumb(img, url) {
    if (state.info && state.info.auth && state.info.auth.reads) {
      // protected reads: <img src> cannot send the key header, so fetch the bytes ourselves
      api(url, { blob: true }).then((b) => {
        const u = URL.createObjectURL(b);
        state.blobUrls.push(u);
        img.src = u;
      }).catch(() => img.classList.add("broken"));
    } else {
      img.src = url;
    }
    img.addEventListener("error", () => img.classList.add("broken"), { once: true });
  }

  function clearGrid() {
    els.results.replaceChildren();
    state.shown.clear();
    state.weak = 0;
    state.showWeak = false;
    state.groups = 0;
    els.showWeaker.hidden = true;
    for (const u of state.blobUrls) URL.revokeObjectURL(u);
    state.blobUrls = [];
    els.empty.hidden = true;
  }

  function fmtPct(p) { return `${(p * 100).toFixed(p >= 0.995 || p < 0.005 ? 1 : 0)}%`; }

  function card(item, rank) {
    const li = els.template.content.firstElementChild.cloneNode(true);
    li.dataset.id = String(item.id);
    const img = li.querySelector("img");
    img.alt = item.caption ? item.caption : `Image ${item.id}`;
    setThumb(img, item.file_url);
    li.querySelector(".rank").textContent = rank ? `#${rank}` : "";

    const cap = li.querySelector(".caption");
    if (item.caption) {
      cap.textContent = item.caption;
    } else {
      cap.textContent = item.original_name ? item.original_name : `Image ${item.id}`;
      cap.classList.add("none");
    }

    const score = li.querySelector(".score");
    if (typeof item.score === "number") {
      score.textContent = `score ${item.score.toFixed(3)}`;
      score.title = "cosine similarity of the query and the image";
    } else if (item.width && item.height) {
      score.textContent = `${item.width}×${item.height}`;
    } else {
      score.remove();
    }
    const match = li.querySelector(".match");
    if (typeof item.match === "number") {
      match.textContent = `match ${fmtPct(item.match)}`;
      match.title = "attention-fusion match probability (re-rank)";
      match.hidden = false;
    }
    const dupOf = li.querySelector(".dup-of");
    if (item.duplicateOf) {
      dupOf.textContent = `copy of #${item.duplicateOf} (${item.similarity.toFixed(3)})`;
      dupOf.title = "near duplicate: aligned pixel similarity";
      dupOf.hidden = false;
      li.classList.add("dup");
    }
    const ranks = li.querySelector(".ranks");
    const sides = [];
    if (item.vector_rank) sides.push(`picture #${item.vector_rank}`);
    if (item.keyword_rank) sides.push(`words #${item.keyword_rank}`);
    if (sides.length && state.query && state.query.searchMode === "hybrid") {
      ranks.textContent = sides.join(" · ");
      ranks.title = "rank in the picture (vector) list and in the words (keyword) list";
      ranks.hidden = false;
    }

    const tags = li.querySelector(".tags");
    for (const t of item.tags || []) {
      const tli = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "tag";
      b.dataset.tag = t;
      b.textContent = t;
      b.title = `Filter by the tag “${t}”`;
      tli.append(b);
      tags.append(tli);
    }
    if (!tags.children.length) tags.remove();

    const name = item.caption ? `“${item.caption}”` : `image ${item.id}`;
    li.querySelector('[data-action="similar"]').setAttribute("aria-label", `Similar to ${name}`);
    li.querySelector('[data-action="reference"]').setAttribute("aria-label", `Use ${name} as reference`);
    li.querySelector('[data-action="explain"]').setAttribute("aria-label", `Why this hit: ${name}`);
    li.querySelector('[data-action="delete"]').setAttribute("aria-label", `Delete ${name}`);
    li._item = item;
    return li;
  }

  // Near-duplicate groups: each image with copies, then its copies (each shown once).
  function appendGroups(groups) {
    for (const group of groups) {
      state.groups += 1;
      const before = state.shown.size;
      appendItems([group.item], false);
      const head = els.results.lastElementChild;
      if (state.shown.size > before && head) head.classList.add("dup-head");
      appendItems(group.duplicates.map((d) => ({ ...d, tags: [], duplicateOf: group.item.id })),
                  false);
    }
    els.empty.hidden = state.shown.size > 0;
    els.empty.textContent = state.shown.size ? "" : "No near duplicates found.";
  }

  function isWeak(item) {
    return Boolean(state.query && state.query.cutoff) && typeof item.match === "number"
      && item.match < MIN_MATCH;
  }

  function appendItems(items, numbered) {
    const frag = document.createDocumentFragment();
    let rank = state.shown.size;
    for (const item of items) {
      if (state.shown.has(item.id)) continue;
      state.shown.add(item.id);
      rank += 1;
      const li = card(item, numbered ? rank : 0);
      if (isWeak(item)) {
        li.classList.add("weak");
        li.dataset.weak = "true";
        li.hidden = !state.showWeak;
        state.weak += 1;
      }
      frag.append(li);
    }
    els.results.append(frag);
    showWeakToggle();
  }

  function showWeakToggle() {
    const visible = state.shown.size - (state.showWeak ? 0 : state.weak);
    els.empty.hidden = visible > 0;
    els.empty.textContent = state.weak && !state.showWeak
      ? "No strong matches." : "Nothing found.";
    els.showWeaker.hidden = state.weak === 0;
    els.showWeaker.setAttribute("aria-pressed", String(state.showWeak));
    els.showWeaker.textContent = state.showWeak
      ? "Hide weaker matches" : `Show ${state.weak} weaker ${state.weak === 1 ? "match" : "matches"}`;
  }

  els.showWeaker.addEventListener("click", () => {
    state.showWeak = !state.showWeak;
    for (const li of els.results.querySelectorAll('[data-weak="true"]')) li.hidden = !state.showWeak;
    showWeakToggle();
  });

  // ---- searching and browsing ------------------------------------------------------------

  function describe(query) {
    switch (query.mode) {
      case "text": return `Results for “${query.text}”`;
      case "image":
        return query.target === "captions"
          ? (query.imageId ? `Captions matching image ${query.imageId}` : "Captions matching your image")
          : (query.imageId ? `Images similar to image ${query.imageId}` : "Images similar to your image");
      case "composed":
        return `${query.imageId ? `Image ${query.imageId}` : "Your image"}, changed: “${query.text}”`;
      case "duplicates": return "Near duplicates";
      default: return "Newest images";
    }
  }

  function multipart(file, fields) {
    const fd = new FormData();
    fd.append("file", file, file.name || "image");
    for (const [k, v] of Object.entries(fields)) {
      if (v !== undefined && v !== null && v !== "") fd.append(k, String(v));
    }
    return fd;
  }

  async function fetchPage(query, k, offset) {
    const tags = query.tags && query.tags.length ? query.tags : undefined;
    switch (query.mode) {
      case "text":
        return api(`${API}/search/text`, {
          method: "POST",
          // min_match 0 keeps every hit but has each one scored by the match head, keyword
          // hits included; the page hides those under MIN_MATCH behind "show weaker matches"
          json: { query: query.text, k, tags, rerank: query.rerank, mode: query.searchMode,
                  min_match: query.cutoff ? 0 : undefined },
        });
      case "image":
        if (query.file) {
          return api(`${API}/search/image/upload`, {
            method: "POST",
            form: multipart(query.file, { k, target: query.target, tags: tags && tags.join(",") }),
          });
        }
        return api(`${API}/search/image`, {
          method: "POST", json: { image_id: query.imageId, k, tags, target: query.target },
        });
      case "composed":
        if (query.file) {
          return api(`${API}/search/composed/upload`, {
            method: "POST",
            form: multipart(query.file, { text: query.text, k, tags: tags && tags.join(",") }),
          });
        }
        return api(`${API}/search/composed`, {
          method: "POST", json: { image_id: query.imageId, text: query.text, k, tags },
        });
      case "duplicates": {
        const params = new URLSearchParams({ offset: String(offset), limit: String(PAGE) });
        return api(`${API}/duplicates?${params}`);
      }
      default: {
        const params = new URLSearchParams({ offset: String(offset), limit: String(PAGE) });
        if (query.tag) params.set("tag", query.tag);
        return api(`${API}/images?${params}`);
      }
    }
  }

  async function run(query, { more = false, highlight = [] } = {}) {
    const seq = ++state.seq;
    const k = more ? Math.min(state.k + PAGE, MAX_K) : PAGE;
    const offset = more ? state.offset : 0;
    clearError();
    busy(true);
    try {
      const data = await fetchPage(query, k, offset);
      if (seq !== state.seq) return; // a newer request owns the grid
      const firstNew = more ? els.results.children.length : 0;
      if (!more) {
        clearGrid();
        state.query = query;
        els.title.textContent = describe(query);
      }
      if (query.mode === "duplicates") {
        appendGroups(data.groups);
        state.offset = offset + data.limit;
        state.total = data.total;
        els.loadMore.hidden = state.offset >= data.total;
        const seen = Math.min(state.offset, data.total);
        setStatus(`${state.groups} ${state.groups === 1 ? "image has" : "images have"} near `
                  + `duplicates among the newest ${seen} of ${data.total}`);
      } else if (query.mode === "browse") {
        appendItems(data.items, false);
        state.offset = offset + data.items.length;
        state.total = data.total;
        els.loadMore.hidden = state.offset >= data.total || data.items.length === 0;
        const tagged = query.tag ? ` tagged “${query.tag}”` : "";
        setStatus(`${state.shown.size} of ${data.total} images${tagged}, newest first`);
      } else {
        const before = state.shown.size;
        appendItems(data.hits, true);
        state.k = k;
        els.loadMore.hidden = data.hits.length < k || k >= MAX_K;
        const n = state.shown.size - state.weak;
        const how = data.reranked ? `, re-ranked (${data.fusion} fusion)` : "";
        const weak = state.weak ? ` (${state.weak} weaker hidden)` : "";
        setStatus(`${n} ${n === 1 ? "hit" : "hits"}${weak} in ${Math.round(data.took_ms)} ms${how}`);
        if (more && state.shown.size === before) els.loadMore.hidden = true;
      }
      for (const id of highlight) {
        const li = els.results.querySelector(`[data-id="${Number(id)}"]`);
        if (li) li.classList.add("fresh");
      }
      if (more) {
        // keyboard users continue at the first new card
        const first = els.results.children[firstNew];
        const target = first && first.querySelector("button");
        if (target) target.focus({ preventScroll: true });
      }
    } catch (err) {
      if (seq !== state.seq) return;
      showError(err, "Search failed");
    } finally {
      busy(false);
    }
  }

  function rerun() { if (state.query) run(state.query); else browse(); }

  function browse() {
    const tags = filterTags();
    run({ mode: "browse", tag: tags[0] || "" });
  }

  function textSearch(text) {
    const query = { mode: "text", text, tags: filterTags(), rerank: els.rerank.checked,
                    searchMode: els.searchMode.value, cutoff: els.cutoff.checked };
    try {
      const url = new URL(window.location.href);
      url.searchParams.set("q", text);
      window.history.replaceState(null, "", url);
    } catch { /* history not available */ }
    return run(query);
  }

  function clearUrlQuery() {
    try {
      const url = new URL(window.location.href);
      if (url.searchParams.has("q")) {
        url.searchParams.delete("q");
        window.history.replaceState(null, "", url);
      }
    } catch { /* history not available */ }
  }

  els.textForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = els.q.value.trim();
    if (!text) { clearUrlQuery(); browse(); return; }
    textSearch(text);
  });

  els.browse.addEventListener("click", () => {
    els.q.value = "";
    clearUrlQuery();
    browse();
  });

  els.showDuplicates.addEventListener("click", () => {
    els.q.value = "";
    clearUrlQuery();
    run({ mode: "duplicates" });
  });

  els.rerank.addEventListener("change", () => {
    if (state.query && state.query.mode === "text") textSearch(state.query.text);
  });
  for (const control of [els.searchMode, els.cutoff]) {
    control.addEventListener("change", () => {
      if (state.query && state.query.mode === "text") textSearch(state.query.text);
    });
  }

  els.tagFilter.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") {
      ev.preventDefault();
      applyTagFilter();
    }
  });
  els.tagFilter.addEventListener("change", () => applyTagFilter(true));

  function applyTagFilter(onlyIfChanged = false) {
    const q = state.query;
    const tags = filterTags();
    if (onlyIfChanged && q) {
      const now = q.mode === "browse" ? [q.tag].filter(Boolean) : q.tags || [];
      const wanted = q.mode === "browse" ? tags.slice(0, 1) : tags;
      if (now.join(",") === wanted.join(",")) return;
    }
    if (!q || q.mode === "browse") { browse(); return; }
    run({ ...q, tags });
  }

  els.loadMore.addEventListener("click", () => {
    if (state.query) run(state.query, { more: true });
  });

  // ---- search by image -------------------------------------------------------------------

  function imageSearch(file) {
    run({ mode: "image", file, target: els.imageTarget.value, tags: filterTags() });
  }

  function wireDropzone(zone, input, onFile) {
    input.addEventListener("change", () => {
      const f = input.files && input.files[0];
      if (f) onFile(f);
      input.value = "";
    });
    zone.addEventListener("dragover", (ev) => {
      ev.preventDefault();
      zone.classList.add("dragover");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragover"));
    zone.addEventListener("drop", (ev) => {
      ev.preventDefault();
      zone.classList.remove("dragover");
      const f = ev.dataTransfer && ev.dataTransfer.files && ev.dataTransfer.files[0];
      if (f) onFile(f);
    });
  }

  wireDropzone(els.imageDrop, els.imageFile, imageSearch);
  els.imageForm.addEventListener("submit", (ev) => ev.preventDefault());
  els.imageTarget.addEventListener("change", () => {
    const q = state.query;
    if (q && q.mode === "image") run({ ...q, target: els.imageTarget.value });
  });

  // ---- composed search -------------------------------------------------------------------

  function setReference(ref) {
    if (state.referenceBlobUrl) {
      URL.revokeObjectURL(state.referenceBlobUrl);
      state.referenceBlobUrl = null;
    }
    state.reference = ref;
    if (!ref) {
      els.reference.hidden = true;
      els.referenceImg.removeAttribute("src");
      return;
    }
    if (ref.file) {
      state.referenceBlobUrl = URL.createObjectURL(ref.file);
      els.referenceImg.src = state.referenceBlobUrl;
      els.referenceLabel.textContent = ref.file.name || "your image";
      els.reference.dataset.id = "";
    } else {
      setThumb(els.referenceImg, ref.url);
      els.referenceLabel.textContent = ref.caption ? `#${ref.id} · ${ref.caption}` : `Image #${ref.id}`;
      els.reference.dataset.id = String(ref.id);
    }
    els.referenceImg.alt = "Reference image";
    els.reference.hidden = false;
  }

  wireDropzone(els.composeDrop, els.composeFile, (file) => {
    setReference({ file });
    els.composeText.focus();
  });
  els.referenceClear.addEventListener("click", () => {
    setReference(null);
    els.composeFile.focus();
  });

  els.composeForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = els.composeText.value.trim();
    const ref = state.reference;
    if (!ref) {
      showError(new Error("Pick a reference image first: drop one, choose a file, or use “Reference” on a result."));
      els.composeFile.focus();
      return;
    }
    if (!text) {
      showError(new Error("Type how the reference should change, e.g. “make the circle blue”."));
      els.composeText.focus();
      return;
    }
    run({
      mode: "composed", text, tags: filterTags(),
      file: ref.file || null, imageId: ref.file ? null : ref.id,
    });
  });

  // ---- upload ----------------------------------------------------------------------------

  els.uploadForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const files = Array.from(els.uploadFiles.files || []);
    if (!files.length) {
      showError(new Error("Choose at least one image to upload."));
      els.uploadFiles.focus();
      return;
    }
    const limits = (state.info && state.info.limits) || {};
    if (limits.max_files_per_request && files.length > limits.max_files_per_request) {
      showError(new Error(`At most ${limits.max_files_per_request} files per upload.`));
      return;
    }
    const big = limits.max_upload_bytes && files.find((f) => f.size > limits.max_upload_bytes);
    if (big) {
      showError(new Error(`“${big.name}” is larger than the ${Math.round(limits.max_upload_bytes / 1048576)} MiB limit.`));
      return;
    }
    const fd = new FormData();
    for (const f of files) fd.append("files", f, f.name);
    const caption = els.uploadCaption.value.trim();
    if (caption) fd.append("caption", caption);
    const tags = tagList(els.uploadTags.value);
    if (tags.length) fd.append("tags", tags.join(","));
    const button = $("upload-submit");
    button.disabled = true;
    clearError();
    busy(true);
    try {
      const data = await api(`${API}/images`, { method: "POST", form: fd });
      const items = data.items || [];
      const dups = items.filter((it) => it.duplicate).length;
      const near = items.filter((it) => it.near_duplicates && it.near_duplicates.length);
      els.uploadForm.reset();
      els.q.value = "";
      clearUrlQuery();
      els.tagFilter.value = "";
      await run({ mode: "browse", tag: "" }, { highlight: items.map((it) => it.id) });
      const n = items.length;
      let msg = `Uploaded ${n} ${n === 1 ? "image" : "images"}`;
      if (dups) msg += ` (${dups} already stored)`;
      if (near.length) {
        const ids = [...new Set(near.flatMap((it) => it.near_duplicates.map((d) => `#${d.id}`)))];
        msg += `; ${near.length} ${near.length === 1 ? "looks" : "look"} like a copy of ${ids.join(", ")}`;
      }
      setStatus(`${msg}. ${els.status.textContent}`);
      loadInfo();
    } catch (err) {
      showError(err, "Upload failed");
    } finally {
      button.disabled = false;
      busy(false);
    }
  });

  // ---- actions on a result ---------------------------------------------------------------

  function currentText() {
    const q = state.query;
    if (q && (q.mode === "text" || q.mode === "composed")) return q.text;
    return els.q.value.trim();
  }

  function drawHeatmap(canvas, grid, rows, cols) {
    const flat = grid.flat();
    let lo = Math.min(...flat);
    let hi = Math.max(...flat);
    if (!Number.isFinite(lo) || !Number.isFinite(hi)) { lo = 0; hi = 1; }
    const span = hi - lo || 1;
    canvas.width = cols;
    canvas.height = rows;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(cols, rows);
    // blue -> cyan -> yellow -> red, more opaque where the attention is higher
    const stops = [[0, [40, 60, 220]], [0.35, [0, 200, 230]], [0.7, [255, 220, 0]], [1, [230, 20, 20]]];
    for (let r = 0; r < rows; r += 1) {
      for (let c = 0; c < cols; c += 1) {
        const v = ((grid[r] && grid[r][c]) - lo) / span || 0;
        let j = 1;
        while (j < stops.length - 1 && v > stops[j][0]) j += 1;
        const [a, ca] = stops[j - 1];
        const [b, cb] = stops[j];
        const t = Math.min(1, Math.max(0, (v - a) / (b - a)));
        const o = (r * cols + c) * 4;
        for (let ch = 0; ch < 3; ch += 1) img.data[o + ch] = Math.round(ca[ch] + (cb[ch] - ca[ch]) * t);
        img.data[o + 3] = Math.round(255 * 0.9 * Math.pow(v, 0.8)); // low attention stays clear
      }
    }
    ctx.putImageData(img, 0, 0);
  }

  async function explain(li, id, button) {
    const canvas = li.querySelector(".heatmap");
    const out = li.querySelector(".explain");
    if (button.getAttribute("aria-pressed") === "true") {
      canvas.hidden = true;
      out.hidden = true;
      button.setAttribute("aria-pressed", "false");
      return;
    }
    const text = currentText();
    if (!text) {
      showError(new Error("Type a search text first: “Why this hit” shows where that text looks in the image."));
      els.q.focus();
      return;
    }
    clearError();
    button.disabled = true;
    try {
      const data = await api(`${API}/explain`, { method: "POST", json: { image_id: id, text } });
      drawHeatmap(canvas, data.grid, data.rows, data.cols);
      canvas.hidden = false;
      canvas.setAttribute("aria-label", `Attention heatmap of “${text}” over the image`);
      canvas.setAttribute("role", "img");
      out.textContent = `${fmtPct(data.probability)} match for “${text}”`;
      out.title = "Attention-fusion match probability; the heatmap shows where the text looks in the image";
      out.dataset.probability = String(data.probability);
      out.hidden = false;
      button.setAttribute("aria-pressed", "true");
    } catch (err) {
      showError(err, "Could not explain this hit");
    } finally {
      button.disabled = false;
    }
  }

  async function remove(li, item, button) {
    const name = item.caption ? `“${item.caption}”` : `image ${item.id}`;
    if (!window.confirm(`Delete ${name} (#${item.id})? This cannot be undone.`)) return;
    clearError();
    button.disabled = true;
    try {
      await api(`${API}/images/${item.id}`, { method: "DELETE" });
      const next = li.nextElementSibling || li.previousElementSibling;
      li.classList.add("removing");
      state.shown.delete(item.id);
      if (state.query && state.query.mode === "browse") {
        state.offset = Math.max(0, state.offset - 1); // the next page moved up by one
        state.total = Math.max(0, state.total - 1);
      }
      if (state.reference && state.reference.id === item.id) setReference(null);
      setTimeout(() => li.remove(), 200);
      els.empty.hidden = state.shown.size > 0;
      setStatus(`Deleted ${name}.`);
      const focusTarget = next && next.querySelector('[data-action="delete"]');
      if (focusTarget) focusTarget.focus(); else els.results.focus();
      loadInfo();
    } catch (err) {
      showError(err, "Delete failed");
      button.disabled = false;
    }
  }

  els.results.addEventListener("click", (ev) => {
    const target = ev.target instanceof Element ? ev.target : null;
    const li = target && target.closest(".card");
    if (!li) return;
    const item = li._item;
    const tagButton = target.closest(".tag");
    if (tagButton) {
      els.tagFilter.value = tagButton.dataset.tag || "";
      applyTagFilter();
      return;
    }
    const button = target.closest("button[data-action]");
    if (!button) return;
    switch (button.dataset.action) {
      case "similar":
        run({ mode: "image", imageId: item.id, target: "images", tags: filterTags() });
        els.results.focus({ preventScroll: true });
        break;
      case "reference": {
        setReference({ id: item.id, url: item.file_url, caption: item.caption });
        const panel = els.composeForm.closest("details");
        if (panel) panel.open = true;
        els.composeText.focus();
        setStatus(`Reference set to image #${item.id}. Type the change and press Enter.`);
        break;
      }
      case "explain":
        explain(li, item.id, button);
        break;
      case "delete":
        remove(li, item, button);
        break;
      default:
        break;
    }
  });

  // ---- start -----------------------------------------------------------------------------

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
})();
