// "Why this hit": the attention heatmap of the search text over one image.

import { API, api } from "./api.js";
import { els } from "./dom.js";
import { clearError, showError } from "./messages.js";
import { fmtPct } from "./results.js";
import { state } from "./state.js";

function currentText() {
  const q = state.query;
  if (q && (q.mode === "text" || q.mode === "composed")) return q.text;
  return els.q.value.trim();
}

export function drawHeatmap(canvas, grid, rows, cols) {
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

export async function explain(li, id, button) {
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
