// What the results grid shows, shared by the panels.

export const PAGE = 24;
export const MAX_K = 1000;

export const state = {
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
