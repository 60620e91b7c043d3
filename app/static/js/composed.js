// The composed-search panel: a reference image plus a change in words.

import { els, wireDropzone } from "./dom.js";
import { showError } from "./messages.js";
import { filterTags, setThumb } from "./results.js";
import { run } from "./search.js";
import { state } from "./state.js";

export function setReference(ref) {
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
