"""Retrieval metrics in and out of distribution, with relevance computed from scene graphs.

Every metric is measured on two worlds drawn from the same vocabulary and claims: the training
renderer's own test split (``in_distribution``) and the independently written OOD renderer with
held-out phrasings (``ood``, :mod:`models.synthetic.ood`), which nothing is trained or tuned on.
``evaluate`` reports both side by side for every head.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import synthetic as syn
from .fusion import Batch
from .rerank import rerank_scores
from .retrieval import FUSION_KIND, RetrievalModel
from .synthetic import ood
from .synthetic.ood_phrasing import phrase_ood
from .text_tower import TextBatch

WORLDS = ("in_distribution", "ood")


@dataclass(frozen=True)
class Query:
    image: Image.Image
    scene: syn.Scene
    claim: syn.Claim
    caption: str
    heldout_phrasing: bool


Triplet = tuple[Image.Image, str, Image.Image, syn.Scene, syn.Scene, str]


@dataclass(frozen=True)
class World:
    """Where a world's galleries, captions and triplets come from."""

    name: str
    gallery: Callable[[int], list[Query]]
    heldout: Callable[[int], list[Query]]
    triplet: Callable[[int], Triplet]
    phrase: Callable[[syn.Claim, np.random.Generator, int], str]
    scene_at: Callable[[int], tuple[Image.Image, syn.Scene]]  # for the swapped-twin rows


def _id_queries(split: str, n: int) -> list[Query]:
    return [Query(e.image, e.scene, e.claim, e.caption, False) for e in syn.examples(split, n)]


def _ood_queries(split: str, n: int) -> list[Query]:
    return [Query(e.image, e.scene, e.claim, e.caption, e.heldout_phrasing)
            for e in ood.ood_examples(split, n)]


def in_distribution() -> World:
    """The training renderer's test split, captions in the training phrasings."""
    def scene_at(i: int) -> tuple[Image.Image, syn.Scene]:
        ex = syn.example("test", i)
        return ex.image, ex.scene

    return World("in_distribution", lambda n: _id_queries("test", n),
                 lambda n: _id_queries("heldout", n), lambda i: syn.triplet("test", i),
                 lambda c, rng, i: syn.caption_text(c, rng), scene_at)


def out_of_distribution(split: str = "ood-test") -> World:
    """The OOD renderer; every other query worded in a held-out phrasing. ``split`` is
    ``ood-test`` (report) or ``ood-val`` (choices made after training, such as calibration)."""
    def phrase(c: syn.Claim, rng: np.random.Generator, i: int) -> str:
        return phrase_ood(c, rng)[0] if i % 2 else syn.caption_text(c, rng)

    def scene_at(i: int) -> tuple[Image.Image, syn.Scene]:
        ex = ood.ood_example(split, i)
        return ex.image, ex.scene

    return World("ood", lambda n: _ood_queries(split, n),
                 lambda n: _ood_queries("ood-heldout", n), lambda i: ood.ood_triplet(split, i),
                 phrase, scene_at)


# ---- helpers ----------------------------------------------------------------------------------


def recall_at(ranked: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Fraction of queries with a relevant item among their top k (ranked: (Q, >=k) indices)."""
    top = ranked[:, :k]
    return float(np.mean([relevant[q, top[q]].any() for q in range(len(top))]))


def _hits(ranked: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    return relevant[np.arange(len(ranked)), ranked[:, 0]]


def _rank(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, part, 1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, 1)


def _r(x: float) -> float:
    return round(float(x), 4)


@torch.inference_mode()
def encode_for_fusion(model: RetrievalModel, texts: Sequence[str]) -> TextBatch:
    """Text tokens and embeddings of ``texts``, once, for pairing with many images."""
    return model._texts_forward(model.tokenize(list(texts)))


@torch.inference_mode()
def pair_logits(model: RetrievalModel, kind: str, tokens: np.ndarray, emb: np.ndarray,
                rows: np.ndarray, cols: np.ndarray, texts: TextBatch,
                chunk: int = 512) -> np.ndarray:
    """Match logits of (image ``rows[i]``, text ``cols[i]``) pairs for one fusion head."""
    assert model.fusion is not None
    out = []
    for s in range(0, len(rows), chunk):
        r, c = rows[s : s + chunk], torch.as_tensor(cols[s : s + chunk], device=model.device)
        b = Batch(image_tokens=torch.from_numpy(tokens[r].astype(np.float32)).to(model.device),
                  image_emb=torch.from_numpy(emb[r]).to(model.device),
                  text_tokens=texts.tokens[c].float(),
                  text_mask=texts.pad[c], text_eot=texts.eot[c], text_emb=texts.emb[c])
        out.append(model.fusion.score(kind, b).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@torch.inference_mode()
def _compose(model: RetrievalModel, kind: str, tokens: np.ndarray, emb: np.ndarray,
             texts: list[str]) -> np.ndarray:
    if model.fusion is None:
        return model.compose_from(tokens, emb, texts)
    out = []
    for s in range(0, len(texts), 256):
        b = model._fusion_batch(tokens[s : s + 256], emb[s : s + 256], texts[s : s + 256])
        out.append(model.fusion.compose(kind, b).float().cpu().numpy())
    return np.concatenate(out)


def reliability_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of match probabilities against true/false labels."""
    idx = np.clip((probs * bins).astype(int), 0, bins - 1)
    err = sum(abs(probs[idx == b].mean() - labels[idx == b].mean()) * np.mean(idx == b)
              for b in range(bins) if np.any(idx == b))
    return _r(err)


def _kinds(model: RetrievalModel) -> list[str]:
    return list(model.fusion.heads) if model.fusion is not None else []


# ---- metrics ----------------------------------------------------------------------------------


def _query_groups(qs: list[Query]) -> dict[str, np.ndarray]:
    n_obj = np.array([len(q.claim.objects) for q in qs])
    rel = np.array([q.claim.relation is not None for q in qs])
    held = np.array([q.heldout_phrasing for q in qs])
    return {"one_object": n_obj == 1, "two_object_relation": rel,
            "two_object_no_relation": (n_obj == 2) & ~rel,
            "familiar_phrasing": ~held, "heldout_phrasing": held}


def retrieval(model: RetrievalModel, world: World, n: int, depth: int) -> dict[str, Any]:
    """Text->image, image->text, re-ranked text->image (every head) on an ``n``-image gallery."""
    qs = world.gallery(n)
    t0 = time.perf_counter()
    emb, tok = model.encode_images_with_tokens([q.image for q in qs])
    encode_s = time.perf_counter() - t0
    texts = [q.caption for q in qs]
    rel = np.array([[syn.claim_true(q.claim, g.scene) for g in qs] for q in qs])
    sims = model.encode_texts(texts) @ emb.T
    ranked = _rank(sims, max(10, depth))
    out: dict[str, Any] = {f"t2i_r{k}": _r(recall_at(ranked, rel, k)) for k in (1, 5, 10)}
    i2t = _rank(sims.T, 10)
    out.update({f"i2t_r{k}": _r(recall_at(i2t, rel.T, k)) for k in (1, 5, 10)})
    hit = _hits(ranked, rel)
    groups = _query_groups(qs)
    if world.name == "in_distribution":  # the same claims, worded the held-out way
        rng = np.random.default_rng(11)
        held_texts = [phrase_ood(q.claim, rng)[0] for q in qs]
        held_hit = _hits(_rank(model.encode_texts(held_texts) @ emb.T, 1), rel)
        groups["heldout_phrasing"] = np.ones(len(qs), bool)
    by = {}
    for g, mask in groups.items():
        h = held_hit if (g == "heldout_phrasing" and world.name == "in_distribution") else hit
        by[g] = {"r1": _r(h[mask].mean()) if mask.any() else None, "queries": int(mask.sum())}
    out["t2i_r1_by_query"] = by
    # re-rank the top ``depth`` by each head's match probability, blended with the cosine as
    # the service does (models.rerank.rerank_scores)
    cand = ranked[:, :depth]
    rows, cols = cand.ravel(), np.repeat(np.arange(len(qs)), cand.shape[1])
    tb = encode_for_fusion(model, texts) if model.fusion is not None else None
    rerank: dict[str, float] = {}
    for kind in _kinds(model):
        assert tb is not None
        logits = pair_logits(model, kind, tok, emb, rows, cols, tb).reshape(cand.shape)
        probs = model.calibrated(torch.from_numpy(logits)).numpy()  # what `match` returns
        blended = rerank_scores(np.take_along_axis(sims, cand, 1), probs, model.temperature)
        if kind == FUSION_KIND:  # how well the served probabilities are calibrated here
            out["match_ece"] = reliability_ece(probs.ravel(), rel[cols, rows])
        order = np.argsort(-blended, axis=1, kind="stable")
        rerank[kind] = _r(recall_at(np.take_along_axis(cand, order, 1), rel, 1))
    out["t2i_r1_rerank"] = rerank.get(FUSION_KIND, out["t2i_r1"])
    out["t2i_r1_rerank_by_head"] = rerank
    out["gallery_encode_seconds"] = round(encode_s, 3)
    out["gallery"] = len(qs)
    return out


def _twin_rows(world: World, n: int) -> list[tuple[Image.Image, list[str]]]:
    rng = np.random.default_rng(12345)
    rows: list[tuple[Image.Image, list[str]]] = []
    i = 0
    while len(rows) < n and i < n * 20:
        image, scene = world.scene_at(100_000 + i)  # apart from the gallery's indices
        i += 1
        if len(scene.objects) != 2:
            continue
        claim = syn.full_claim(scene)
        a, r = syn.swap_attributes(claim, scene), syn.swap_relation(claim, scene)
        if a is None or r is None:
            continue
        rows.append((image, [world.phrase(c, rng, len(rows)) for c in (claim, a, r)]))
    return rows


def compositional(model: RetrievalModel, world: World, n: int) -> dict[str, Any]:
    """Choose the true full caption over its attribute- and relation-swapped twins (3-way)."""
    rows = _twin_rows(world, n)
    emb, tok = model.encode_images_with_tokens([im for im, _ in rows])
    texts = [t for _, ts in rows for t in ts]
    idx = np.repeat(np.arange(len(rows)), 3)
    temb = model.encode_texts(texts)
    late = (emb[idx] * temb).sum(-1).reshape(-1, 3)
    result: dict[str, Any] = {"dual_encoder": _r(np.mean(late.argmax(1) == 0))}
    tb = encode_for_fusion(model, texts) if model.fusion is not None else None
    for kind in _kinds(model):
        assert tb is not None
        s = pair_logits(model, kind, tok, emb, idx, np.arange(len(texts)), tb).reshape(-1, 3)
        result[kind] = _r(np.mean(s.argmax(1) == 0))
    result.setdefault("late", result["dual_encoder"])
    result["n"] = len(rows)
    return result


def composed(model: RetrievalModel, world: World, n: int) -> dict[str, Any]:
    """Composed retrieval R@1: gallery = references + targets of n/2 triplets; the reference
    itself is excluded from its own ranking, as the service does for a stored image."""
    m = max(1, n // 2)
    trips = [world.triplet(i) for i in range(m)]
    imgs = [t[0] for t in trips] + [t[2] for t in trips]
    keys = [t[3].key() for t in trips] + [t[4].key() for t in trips]
    emb, tok = model.encode_images_with_tokens(imgs)
    texts = [t[1] for t in trips]
    rel = np.array([[keys[m + q] == k for k in keys] for q in range(m)])
    result: dict[str, Any] = {}
    by_kind: dict[str, dict[str, float]] = {}
    for kind in _kinds(model) or ["late"]:
        q = _compose(model, kind, tok[:m], emb[:m], texts)
        sims = q @ emb.T
        sims[np.arange(m), np.arange(m)] = -np.inf
        hit = rel[np.arange(m), sims.argmax(1)]
        result[kind] = _r(hit.mean())
        by_kind[kind] = {k: _r(np.mean([h for t, h in zip(trips, hit, strict=True) if t[5] == k]))
                         for k in syn.COMPOSE_KINDS if any(t[5] == k for t in trips)}
    result["by_kind"] = by_kind
    result["gallery"] = 2 * m
    return result


def heldout(model: RetrievalModel, world: World, n: int) -> dict[str, Any]:
    """Text->image R@1 on scenes with colour-shape pairs never seen in training, for captions
    that name a held-out pair."""
    qs = world.heldout(n)
    rng = np.random.default_rng(7)
    emb = model.encode_images([q.image for q in qs])
    queries: list[tuple[str, syn.Claim]] = []
    for q in qs:
        claim = syn.full_claim(q.scene) if rng.random() < 0.5 else q.claim
        if {(d.color, d.shape) for d in claim.objects} & syn.HELDOUT_PAIRS:
            queries.append((world.phrase(claim, rng, len(queries)), claim))
    temb = model.encode_texts([t for t, _ in queries])
    rel = np.array([[syn.claim_true(c, g.scene) for g in qs] for _, c in queries])
    return {"r1": _r(recall_at(_rank(temb @ emb.T, 1), rel, 1)), "queries": len(queries)}


def evaluate_world(model: RetrievalModel, world: World, n: int, depth: int) -> dict[str, Any]:
    """Every metric of the model card on one world."""
    out = retrieval(model, world, n, depth)
    out["compositional"] = compositional(model, world, n)
    out["composed_r1"] = composed(model, world, n)
    out["heldout_pairs_t2i_r1"] = heldout(model, world, n)
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        elif isinstance(v, float) and not k.endswith("seconds"):
            flat[key] = v
    return flat


def side_by_side(report: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """``{metric: {world: value}}`` for every metric measured in any world (dotted names)."""
    flats = {w: _flatten(report[w]) for w in WORLDS if w in report}
    names = sorted({k for f in flats.values() for k in f}, key=lambda k: (k.count("."), k))
    return {k: {w: f.get(k) for w, f in flats.items()} for k in names}


def evaluate(model: RetrievalModel, n: int = 1000, depth: int = 20,
             worlds: Sequence[str] = WORLDS, ood_split: str = "ood-test") -> dict[str, Any]:
    """Every metric of the model card, in distribution and out of it, in one JSON-ready dict.

    ``ood_split`` is ``ood-test`` for figures that are reported and ``ood-val`` for anything
    chosen after training. Raises ValueError for an unknown world or split.
    """
    unknown = set(worlds) - set(WORLDS)
    if unknown:
        raise ValueError(f"unknown worlds {sorted(unknown)}; expected some of {WORLDS}")
    t0 = time.perf_counter()
    report: dict[str, Any] = {}
    for w in worlds:
        world = in_distribution() if w == "in_distribution" else out_of_distribution(ood_split)
        report[w] = evaluate_world(model, world, n, depth)
    report["side_by_side"] = side_by_side(report)
    report["sizes"] = {"gallery": n, "rerank_depth": depth, "ood_split": ood_split}
    report["model"] = model.info()
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def format_table(report: dict[str, Any]) -> str:
    """Every metric of ``report`` as a plain-text table, one column per world."""
    rows = report["side_by_side"]
    worlds = [w for w in WORLDS if w in report]
    width = max((len(k) for k in rows), default=6)
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{w:>15}" for w in worlds)]
    for name, vals in rows.items():
        cells = [f"{vals[w]:>15.3f}" if vals.get(w) is not None else f"{'-':>15}"
                 for w in worlds]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    lines.append(f"gallery {report['sizes']['gallery']}, re-rank depth "
                 f"{report['sizes']['rerank_depth']}, OOD split {report['sizes']['ood_split']}, "
                 f"{report['seconds']} s")
    return "\n".join(lines)
