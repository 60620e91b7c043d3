// The buttons on a result card: similar, reference, why this hit, delete, and tag filters.

import { API, api } from "./api.js";
import { setReference } from "./composed.js";
import { els } from "./dom.js";
import { explain } from "./explain.js";
import { loadInfo } from "./info.js";
import { clearError, setStatus, showError } from "./messages.js";
import { filterTags } from "./results.js";
import { applyTagFilter, run } from "./search.js";
import { state } from "./state.js";

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
