// The page's elements, looked up once (module scripts run after the document is parsed).

export const $ = (id) => document.getElementById(id);
export const els = {
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

export function wireDropzone(zone, input, onFile) {
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
