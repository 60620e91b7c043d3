// The "search by image" panel.

import { els, wireDropzone } from "./dom.js";
import { filterTags } from "./results.js";
import { run } from "./search.js";
import { state } from "./state.js";

function imageSearch(file) {
  run({ mode: "image", file, target: els.imageTarget.value, tags: filterTags() });
}

wireDropzone(els.imageDrop, els.imageFile, imageSearch);
els.imageForm.addEventListener("submit", (ev) => ev.preventDefault());
els.imageTarget.addEventListener("change", () => {
  const q = state.query;
  if (q && q.mode === "image") run({ ...q, target: els.imageTarget.value });
});
