"""Retrieval metrics on the synthetic world, with relevance computed from scene graphs."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import synthetic as syn
from .encoder import FUSION_KIND, RetrievalModel, rerank_scores
from .fusion import Batch


def recall_at(ranked: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Fraction of queries with a relevant item among their top k (ranked: (Q, >=k) indices)."""
    top = ranked[:, :k]
    return float(np.mean([relevant[q, top[q]].any() for q in range(len(top))]))


def _rank(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, part, 1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, 1)


def _encode_gallery(model: RetrievalModel, images: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    return model.encode_images_with_tokens(images)


@torch.inference_mode()
def _head_scores(model: RetrievalModel, kind: str, tokens: np.ndarray, emb: np.ndarray,
                 texts: list[str]) -> np.ndarray:
    """Match logits of (image i, text i) pairs for one fusion strategy."""
    assert model.fusion is not None
    out = []
    for s in range(0, len(texts), 256):
        b: Batch = model._fusion_batch(tokens[s : s + 256], emb[s : s + 256], texts[s : s + 256])
        out.append(model.fusion.score(kind, b).float().numpy())
    return np.concatenate(out)


@torch.inference_mode()
def _head_compose(model: RetrievalModel, kind: str, tokens: np.ndarray, emb: np.ndarray,
                  texts: list[str]) -> np.ndarray:
    assert model.fusion is not None
    out = []
    for s in range(0, len(texts), 256):
        b = model._fusion_batch(tokens[s : s + 256], emb[s : s + 256], texts[s : s + 256])
        out.append(model.fusion.compose(kind, b).float().numpy())
    return np.concatenate(out)


def retrieval(model: RetrievalModel, n: int, depth: int) -> dict[str, Any]:
    """Text->image, image->text and re-ranked text->image on ``n`` test images."""
    exs = syn.examples("test", n)
    t0 = time.perf_counter()
    emb, tok = _encode_gallery(model, [e.image for e in exs])
    encode_s = time.perf_counter() - t0
    texts = [e.caption for e in exs]
    temb = model.encode_texts(texts)
    rel = np.array([[syn.claim_true(e.claim, g.scene) for g in exs] for e in exs])
    sims = temb @ emb.T
    ranked = _rank(sims, max(10, depth))
    out: dict[str, Any] = {
        "t2i_r1": recall_at(ranked, rel, 1),
        "t2i_r5": recall_at(ranked, rel, 5),
        "t2i_r10": recall_at(ranked, rel, 10),
    }
    i2t = _rank(sims.T, 10)
    out.update(i2t_r1=recall_at(i2t, rel.T, 1), i2t_r5=recall_at(i2t, rel.T, 5),
               i2t_r10=recall_at(i2t, rel.T, 10))
    if model.fusion is not None:
        reranked = ranked.copy()
        for q in tqdm(range(n), desc="re-rank", unit="query", leave=False):
            cand = ranked[q, :depth]
            probs = model.match(tok[cand], [texts[q]], embeddings=emb[cand])
            order = np.argsort(-rerank_scores(sims[q, cand], probs), kind="stable")
            reranked[q, :depth] = cand[order]
        out["t2i_r1_rerank"] = recall_at(reranked, rel, 1)
    else:
        out["t2i_r1_rerank"] = out["t2i_r1"]
    out["gallery_encode_seconds"] = round(encode_s, 3)
    return out


def compositional(model: RetrievalModel, n: int) -> dict[str, float]:
    """Choose the true full caption over its attribute- and relation-swapped twins."""
    rng = np.random.default_rng(12345)
    rows: list[tuple[Any, list[str]]] = []
    i = 0
    while len(rows) < n and i < n * 20:
        ex = syn.example("test", 100_000 + i)
        i += 1
        if len(ex.scene.objects) != 2:
            continue
        claim = syn.full_claim(ex.scene)
        a, r = syn.swap_attributes(claim, ex.scene), syn.swap_relation(claim, ex.scene)
        if a is None or r is None:
            continue
        rows.append((ex.image, [syn.caption_text(c, rng) for c in (claim, a, r)]))
    emb, tok = _encode_gallery(model, [im for im, _ in rows])
    texts = [t for _, ts in rows for t in ts]
    tok3, emb3 = np.repeat(tok, 3, axis=0), np.repeat(emb, 3, axis=0)
    result: dict[str, float] = {}
    temb = model.encode_texts(texts)
    late = (emb3 * temb).sum(-1).reshape(-1, 3)
    result["dual_encoder"] = float(np.mean(late.argmax(1) == 0))
    kinds = list(model.fusion.heads) if model.fusion is not None else []
    for kind in kinds:
        s = _head_scores(model, kind, tok3, emb3, texts).reshape(-1, 3)
        result[kind] = float(np.mean(s.argmax(1) == 0))
    result.setdefault("late", result["dual_encoder"])
    result["n"] = len(rows)
    return result


def composed(model: RetrievalModel, n: int) -> dict[str, Any]:
    """Composed retrieval R@1: gallery = references + targets of n/2 triplets; the reference
    itself is excluded from its own ranking, as the service does for a stored image."""
    m = max(1, n // 2)
    trips = [syn.triplet("test", i) for i in range(m)]
    imgs = [t[0] for t in trips] + [t[2] for t in trips]
    keys = [t[3].key() for t in trips] + [t[4].key() for t in trips]
    emb, tok = _encode_gallery(model, imgs)
    texts = [t[1] for t in trips]
    rel = np.array([[keys[m + q] == k for k in keys] for q in range(m)])
    result: dict[str, Any] = {}
    kinds = list(model.fusion.heads) if model.fusion is not None else []
    per_kind: dict[str, list[str]] = {}
    for kind in kinds or ["late"]:
        if model.fusion is None:
            q = model.compose_from(tok[:m], emb[:m], texts)
        else:
            q = _head_compose(model, kind, tok[:m], emb[:m], texts)
        sims = q @ emb.T
        sims[np.arange(m), np.arange(m)] = -np.inf
        top = sims.argmax(1)
        hit = rel[np.arange(m), top]
        result[kind] = float(hit.mean())
        per_kind[kind] = [t[5] for t, h in zip(trips, hit, strict=True) if h]
    if model.fusion is not None:
        kinds_all = syn.COMPOSE_KINDS
        att = per_kind.get(FUSION_KIND, [])
        totals = {k: sum(1 for t in trips if t[5] == k) for k in kinds_all}
        result["attention_by_kind"] = {k: round(att.count(k) / totals[k], 3)
                                       for k in kinds_all if totals[k]}
    result["gallery"] = 2 * m
    return result


def heldout(model: RetrievalModel, n: int) -> dict[str, float]:
    """Text->image R@1 on scenes with colour-shape pairs never seen in training, for captions
    that name a held-out pair."""
    exs = syn.examples("heldout", n)
    rng = np.random.default_rng(7)
    emb = model.encode_images([e.image for e in exs])
    queries = []
    for e in exs:
        claim = syn.full_claim(e.scene) if rng.random() < 0.5 else e.claim
        named = {(d.color, d.shape) for d in claim.objects}
        if named & syn.HELDOUT_PAIRS:
            queries.append((syn.caption_text(claim, rng), claim))
    temb = model.encode_texts([t for t, _ in queries])
    rel = np.array([[syn.claim_true(c, g.scene) for g in exs] for _, c in queries])
    ranked = _rank(temb @ emb.T, 1)
    return {"heldout_t2i_r1": recall_at(ranked, rel, 1), "heldout_queries": len(queries)}


def evaluate(model: RetrievalModel, n: int = 1000, depth: int = 20) -> dict[str, Any]:
    """Every metric of the model card in one JSON-ready dict."""
    t0 = time.perf_counter()
    out = retrieval(model, n, depth)
    comp = compositional(model, n)
    out["compositional"] = {k: v for k, v in comp.items()}
    out["composed_r1"] = composed(model, n)
    out.update(heldout(model, n))
    out["sizes"] = {"gallery": n, "rerank_depth": depth, "compositional": comp["n"],
                    "composed_gallery": out["composed_r1"]["gallery"]}
    out["model"] = model.info()
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
