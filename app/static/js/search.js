// Searching and browsing: the search bar, tag filter, browse / near-duplicate buttons and
// "load more"; run() fetches a page of any mode into the grid.

import { API, api } from "./api.js";
import { els } from "./dom.js";
import { busy, clearError, setStatus, showError } from "./messages.js";
import { appendGroups, appendItems, clearGrid, filterTags } from "./results.js";
import { MAX_K, PAGE, state } from "./state.js";

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

export async function run(query, { more = false, highlight = [] } = {}) {
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

export function rerun() { if (state.query) run(state.query); else browse(); }

export function browse() {
  const tags = filterTags();
  run({ mode: "browse", tag: tags[0] || "" });
}

export function textSearch(text) {
  const query = { mode: "text", text, tags: filterTags(), rerank: els.rerank.checked,
                  searchMode: els.searchMode.value, cutoff: els.cutoff.checked };
  try {
    const url = new URL(window.location.href);
    url.searchParams.set("q", text);
    window.history.replaceState(null, "", url);
  } catch { /* history not available */ }
  return run(query);
}

export function clearUrlQuery() {
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

export function applyTagFilter(onlyIfChanged = false) {
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
