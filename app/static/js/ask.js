// "Ask" and "Describe" on a result card: a question about the image (answer, probability, the
// next answers, and where the question looked, drawn over the thumbnail), and a generated caption.

import { API, ApiError, api } from "./api.js";
import { els } from "./dom.js";
import { drawHeatmap } from "./explain.js";
import { clearError, showError } from "./messages.js";
import { fmtPct } from "./results.js";

// A model without the head answers 409 not_available; its message says how to train one.
function unavailable(box, err) {
  box.replaceChildren();
  box.classList.add("unavailable");
  box.textContent = `Not available with this model: ${err.message}`;
  box.hidden = false;
}

function showAnswer(li, box, question, data) {
  box.classList.remove("unavailable");
  const head = document.createElement("p");
  head.className = "answer-line";
  const answer = document.createElement("strong");
  answer.className = "answer";
  answer.dataset.testid = "ask-answer";
  answer.textContent = data.answer;
  const prob = document.createElement("span");
  prob.className = "answer-prob";
  prob.textContent = ` ${fmtPct(data.probability)}`;
  prob.title = "calibrated probability of this answer";
  head.append(answer, prob);
  const alts = document.createElement("p");
  alts.className = "alternatives";
  alts.dataset.testid = "ask-alternatives";
  const others = (data.alternatives || []).map((a) => `${a.answer} ${fmtPct(a.probability)}`);
  alts.textContent = others.length ? `or: ${others.join(", ")}` : "";
  alts.hidden = !others.length;
  box.replaceChildren(head, alts);
  box.dataset.answer = data.answer;
  box.dataset.probability = String(data.probability);
  box.title = `Answer to “${question}”`;
  box.hidden = false;

  // the question's attention goes where "Why this hit" draws its own: one overlay at a time
  const canvas = li.querySelector(".heatmap");
  const rows = data.rows || data.grid.length;
  const cols = data.cols || (data.grid[0] || []).length;
  if (rows && cols) {
    drawHeatmap(canvas, data.grid, rows, cols);
    canvas.hidden = false;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `Where the question “${question}” looked in the image`);
    canvas.dataset.source = "ask";
    const why = li.querySelector('[data-action="explain"]');
    if (why) why.setAttribute("aria-pressed", "false");
    const explained = li.querySelector(".explain");
    if (explained) explained.hidden = true;
  }
}

async function ask(li, form) {
  const input = form.querySelector("input");
  const button = form.querySelector("button");
  const box = li.querySelector(".ask-result");
  const question = input.value.trim();
  if (!question) {
    input.focus();
    return;
  }
  clearError();
  button.disabled = true;
  try {
    const data = await api(`${API}/ask`, { method: "POST",
                                           json: { image_id: li._item.id, question } });
    showAnswer(li, box, question, data);
  } catch (err) {
    if (err instanceof ApiError && err.code === "not_available") unavailable(box, err);
    else showError(err, "Could not answer");
  } finally {
    button.disabled = false;
  }
}

async function describe(li, button) {
  const out = li.querySelector(".describe");
  clearError();
  button.disabled = true;
  try {
    const data = await api(`${API}/describe`, { method: "POST", json: { image_id: li._item.id } });
    out.classList.remove("unavailable");
    out.textContent = `“${data.caption}” (${fmtPct(data.probability)})`;
    out.title = "A generated caption and the decoder's probability of it";
    out.dataset.caption = data.caption;
    out.dataset.probability = String(data.probability);
    out.hidden = false;
  } catch (err) {
    if (err instanceof ApiError && err.code === "not_available") unavailable(out, err);
    else showError(err, "Could not describe this image");
  } finally {
    button.disabled = false;
  }
}

els.results.addEventListener("submit", (ev) => {
  const form = ev.target instanceof Element ? ev.target.closest(".ask-form") : null;
  const li = form && form.closest(".card");
  if (!li) return;
  ev.preventDefault();
  ask(li, form);
});

els.results.addEventListener("click", (ev) => {
  const target = ev.target instanceof Element ? ev.target : null;
  const button = target && target.closest('button[data-action="describe"]');
  const li = button && button.closest(".card");
  if (li) describe(li, button);
});
