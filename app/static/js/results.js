// The results grid: hit cards, near-duplicate groups and the weak-match toggle.

import { api } from "./api.js";
import { els } from "./dom.js";
import { state } from "./state.js";

// Hits under this match probability are hidden behind "show weaker matches": the threshold
// with the best F1 of kept hits on the OOD val split (docs/search-quality.md); re-measure it
// (python -m bench.quality_search cutoff) when the match head or its calibration changes.
export const MIN_MATCH = 0.275;

export function tagList(raw) {
  const out = [];
  for (const part of String(raw || "").split(",")) {
    const t = part.trim().toLowerCase();
    if (t && !out.includes(t)) out.push(t);
  }
  return out;
}

export function filterTags() { return tagList(els.tagFilter.value); }

export function setThumb(img, url) {
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

export function clearGrid() {
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

export function fmtPct(p) { return `${(p * 100).toFixed(p >= 0.995 || p < 0.005 ? 1 : 0)}%`; }

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
  li.querySelector('[data-action="describe"]').setAttribute("aria-label", `Describe ${name}`);
  li.querySelector(".ask-form input").setAttribute("aria-label", `Question about ${name}`);
  li._item = item;
  return li;
}

// Near-duplicate groups: each image with copies, then its copies (each shown once).
export function appendGroups(groups) {
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

export function appendItems(items, numbered) {
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
