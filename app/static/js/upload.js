// The upload panel.

import { API, api } from "./api.js";
import { $, els } from "./dom.js";
import { loadInfo } from "./info.js";
import { busy, clearError, setStatus, showError } from "./messages.js";
import { tagList } from "./results.js";
import { clearUrlQuery, run } from "./search.js";
import { state } from "./state.js";

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
