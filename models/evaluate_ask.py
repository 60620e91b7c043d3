"""Evaluation of the question-answering heads and the caption decoder, in distribution (the
training renderer's test split, training wording) and out of it (the OOD renderer, half the
questions in the held-out wording): ``fusion-search eval --only ask,describe``.

* Answers: accuracy per question type for the attention, early and late heads; the served
  (attention) head's calibrated probability, its expected calibration error, and its mean top
  probability on questions about words no training question used ("what colour is the
  teapot?"), against the same on answerable questions.
* Captions: the share of generated captions that parse (the world's grammar,
  :func:`models.describe_grammar.parse_caption`) into a claim true of the scene, that name
  every object's colour and shape, and that also state the relation; against captioning by
  retrieval (the stored caption nearest the image, from a bank of training-split captions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import synthetic as syn
from .answer_heads import SERVED_ASK, AskHeads
from .describe_grammar import names_every_object, parse_caption
from .retrieval import RetrievalModel
from .synthetic.ood_questions import ood_ask_example, unseen_word_question
from .synthetic.questions import QTYPES, RELATION_QTYPES, TRAIN_WORDING, Question, question


@dataclass(frozen=True)
class AskItem:
    """An image, its scene graph and one question about it."""

    scene: syn.Scene
    image: Image.Image
    question: Question
    heldout_wording: bool = False


def id_items(n: int, split: str = "test") -> list[AskItem]:
    """``n`` questions on the training renderer's ``split``, types in turn, training wording."""
    out = []
    for i in range(n):
        ex = syn.example(split, i)
        rng = np.random.default_rng([syn.SPLIT_SEEDS[split], i, 16])
        out.append(AskItem(ex.scene, ex.image,
                           question(ex.scene, rng, TRAIN_WORDING, QTYPES[i % len(QTYPES)])))
    return out


def ood_items(n: int, split: str = "ood-test") -> list[AskItem]:
    """``n`` questions on an OOD split (``models.synthetic.ood_questions``)."""
    return [AskItem(e.scene, e.image, e.question, e.heldout_wording)
            for e in (ood_ask_example(split, i) for i in range(n))]


@torch.inference_mode()
def head_logits(model: RetrievalModel, kind: str, tokens: np.ndarray, emb: np.ndarray,
                texts: Sequence[str], batch: int = 256) -> np.ndarray:
    """(N, answers) raw logits of one ask head for N (image, question) pairs."""
    heads = model.ask_heads
    assert heads is not None
    out = []
    for s in range(0, len(texts), batch):
        b = model.question_batch(tokens[s : s + batch], texts[s : s + batch], emb[s : s + batch])
        out.append(heads.logits(kind, b).float().cpu().numpy())
    return np.concatenate(out)


def calibration_error(probs: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of top-answer probabilities (equal-width bins)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    err = 0.0
    for k in range(bins):
        m = which == k
        if m.any():
            err += m.mean() * abs(probs[m].mean() - correct[m].mean())
    return float(err)


def _r(x: float | np.floating) -> float:
    return round(float(x), 3)


def _accuracy(correct: np.ndarray, items: Sequence[AskItem]) -> dict[str, Any]:
    types = np.array([it.question.qtype for it in items])
    held = np.array([it.heldout_wording for it in items])
    out: dict[str, Any] = {"overall": _r(correct.mean())}
    out["relation"] = _r(correct[np.isin(types, RELATION_QTYPES)].mean())
    out["by_type"] = {t: _r(correct[types == t].mean()) for t in QTYPES if (types == t).any()}
    if held.any() and (~held).any():
        out["training_wording"] = _r(correct[~held].mean())
        out["heldout_wording"] = _r(correct[held].mean())
    return out


def _softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return F.softmax(torch.from_numpy(logits).float() / temperature, dim=-1).numpy()


def answers(model: RetrievalModel, items: Sequence[AskItem], tokens: np.ndarray,
            emb: np.ndarray, unknown_seed: int) -> dict[str, Any]:
    """Accuracy per head and question type; the served head's calibration and its top
    probability on questions about unseen words."""
    heads = model.ask_heads
    assert heads is not None
    target = np.array([heads.answers.index(it.question.answer or "") for it in items])
    rng = np.random.default_rng(unknown_seed)
    unknown = [unseen_word_question(it.scene, rng, it.heldout_wording).text for it in items]
    texts = [it.question.text for it in items]
    out: dict[str, Any] = {"questions": len(items), "accuracy": {}, "unknown_word_top_p": {}}
    for kind in heads.heads:
        temp = heads.temperature if kind == SERVED_ASK else 1.0
        logits = head_logits(model, kind, tokens, emb, texts)
        correct = logits.argmax(-1) == target
        out["accuracy"][kind] = _accuracy(correct, items)
        top = _softmax(logits, temp).max(-1)
        unk = _softmax(head_logits(model, kind, tokens, emb, unknown), temp).max(-1)
        out["unknown_word_top_p"][kind] = {"unknown": _r(unk.mean()), "answerable": _r(top.mean()),
                                           "unknown_below_0.5": _r((unk < 0.5).mean())}
        if kind == SERVED_ASK:
            out["served_ece"] = _r(calibration_error(top, correct))
    return out


def caption_bank(n: int) -> tuple[list[str], list[syn.Claim]]:
    """Stored captions for captioning by retrieval: ``n`` training-split captions."""
    exs = [syn.example("train", i, size=8) for i in range(n)]
    return [e.caption for e in exs], [e.claim for e in exs]


def _claim_scores(claims: Sequence[syn.Claim | None], scenes: Sequence[syn.Scene]
                  ) -> dict[str, float]:
    true = np.array([c is not None and syn.claim_true(c, s) for c, s in zip(claims, scenes,
                                                                            strict=True)])
    complete = np.array([bool(t) and c is not None and names_every_object(c, s)
                         for t, c, s in zip(true, claims, scenes, strict=True)])
    relation = np.array([bool(k) and c is not None and (len(s.objects) == 1
                                                        or c.relation is not None)
                         for k, c, s in zip(complete, claims, scenes, strict=True)])
    return {"true": _r(true.mean()), "complete": _r(complete.mean()),
            "complete_with_relation": _r(relation.mean())}


def captions(model: RetrievalModel, items: Sequence[AskItem], tokens: np.ndarray,
             emb: np.ndarray, bank: tuple[list[str], list[syn.Claim]]) -> dict[str, Any]:
    """Generated captions against the best stored caption, judged by the scene graph."""
    scenes = [it.scene for it in items]
    out: dict[str, Any] = {"images": len(items)}
    if model.has_describe:
        gen = [c for s in range(0, len(tokens), 256)
               for c in model.describe_many(tokens[s : s + 256])]
        parsed = [parse_caption(g["caption"]) for g in gen]
        out["decoder"] = {**_claim_scores(parsed, scenes),
                          "parsed": _r(float(np.mean([p is not None for p in parsed]))),
                          "mean_probability": _r(float(np.mean([g["probability"]
                                                                for g in gen])))}
        out["examples"] = [g["caption"] for g in gen[:3]]
    texts, claims = bank
    best = (emb @ model.encode_texts(texts).T).argmax(-1)
    out["retrieval"] = {**_claim_scores([claims[j] for j in best], scenes),
                        "bank": len(texts)}
    return out


def evaluate_world(model: RetrievalModel, items: Sequence[AskItem], unknown_seed: int,
                   bank: tuple[list[str], list[syn.Claim]]) -> dict[str, Any]:
    emb, tok = model.encode_images_with_tokens([it.image for it in items])
    out: dict[str, Any] = {}
    if model.has_ask:
        out["ask"] = answers(model, items, tok, emb, unknown_seed)
    out["describe"] = captions(model, items, tok, emb, bank)
    return out


def evaluate_answers(model: RetrievalModel, n: int = 1000, ood_split: str = "ood-test",
                     bank: int = 2000) -> dict[str, Any]:
    """The ask and describe report, both worlds (``n`` images each)."""
    captions_bank = caption_bank(bank)
    return {
        "n": n, "ood_split": ood_split,
        "temperature": model.ask_heads.temperature if model.ask_heads is not None else None,
        "in_distribution": evaluate_world(model, id_items(n), 1, captions_bank),
        "out_of_distribution": evaluate_world(model, ood_items(n, ood_split), 2, captions_bank),
    }


def served_logits_ood_val(model: RetrievalModel, heads: AskHeads, n: int
                          ) -> tuple[np.ndarray, np.ndarray]:
    """The served head's raw logits and the answers on ``n`` ood-val questions (the
    temperature is fitted on these; ood-test is never used for it)."""
    items = ood_items(n, "ood-val")
    emb, tok = model.encode_images_with_tokens([it.image for it in items])
    previous = model.ask_heads
    model.ask_heads = heads
    try:
        logits = head_logits(model, SERVED_ASK, tok, emb, [it.question.text for it in items])
    finally:
        model.ask_heads = previous
    return logits, np.array([heads.answers.index(it.question.answer or "") for it in items])


def format_answers_table(report: dict[str, Any]) -> str:
    """The report as text: one row per metric, one column per world."""
    worlds = ("in_distribution", "out_of_distribution")
    rows: list[tuple[str, list[str]]] = []

    def cell(world: str, *path: str) -> str:
        d: Any = report[world]
        for p in path:
            if not isinstance(d, dict) or p not in d:
                return "-"
            d = d[p]
        return f"{d:.3f}" if isinstance(d, float) else str(d)

    ask = report[worlds[0]].get("ask")
    if ask:
        for kind in ask["accuracy"]:
            for key in ("overall", "relation", "training_wording", "heldout_wording"):
                rows.append((f"ask {kind} {key}", [cell(w, "ask", "accuracy", kind, key)
                                                   for w in worlds]))
            for t in QTYPES:
                rows.append((f"ask {kind} {t}", [cell(w, "ask", "accuracy", kind, "by_type", t)
                                                 for w in worlds]))
        for key in ("unknown", "answerable"):
            rows.append((f"ask top p, {key} questions",
                         [cell(w, "ask", "unknown_word_top_p", SERVED_ASK, key) for w in worlds]))
        rows.append(("ask served ECE", [cell(w, "ask", "served_ece") for w in worlds]))
    for src in ("decoder", "retrieval"):
        for key in ("true", "complete", "complete_with_relation"):
            rows.append((f"describe {src} {key}", [cell(w, "describe", src, key)
                                                   for w in worlds]))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{width}}  in-dist  OOD", *(f"{name:<{width}}  {a:>7}  {b:>5}"
                                                      for name, (a, b) in rows)]
    return "\n".join(lines)
