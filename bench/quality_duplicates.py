"""Near-duplicate rule, measured: edited copies of stored images against distinct images of the
same scene graph.

``python -m bench.quality_duplicates [--n 300] [--out bench/results]`` writes
``duplicates.json`` and ``duplicates.png`` (precision and recall against the threshold for the
image-embedding cosine, a 64-bit perceptual hash, and the aligned pixel correlation of
``index.neardup`` that the service uses).

Positives: each original against a copy re-encoded as JPEG (quality 70 and 40), resized (half
and double), cropped (6% off each edge, and 10% off one side), brightened (x1.2) and darkened
(x0.85). Negatives: each original against distinct images of the *same scene graph* (same
background, objects, sizes and relation): a re-render with new scale, rotation and colour jitter
at the same positions, and one with the objects placed anew; plus each original's nearest other
original in the collection (the most similar unrelated picture).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from index.neardup import DUPLICATE_THRESHOLD, signature, similarity
from models import load_model
from models import synthetic as syn
from models.synthetic.sampling import sample_scene

from .common import RESULTS_DIR, machine

Edit = Callable[[Image.Image], Image.Image]


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _crop(img: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = img.size
    return img.crop((round(w * left), round(h * top), round(w * (1 - right)),
                     round(h * (1 - bottom))))


VARIANTS: dict[str, Edit] = {
    "jpeg70": lambda im: _jpeg(im, 70),
    "jpeg40": lambda im: _jpeg(im, 40),
    "half": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "double": lambda im: im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC),
    "crop6": lambda im: _crop(im, 0.06, 0.06, 0.06, 0.06),
    "crop10side": lambda im: _crop(im, 0.10, 0.0, 0.0, 0.0),
    "bright120": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "dark85": lambda im: ImageEnhance.Brightness(im).enhance(0.85),
}


def same_graph_twins(scene: syn.Scene, i: int, size: int) -> list[Image.Image]:
    """Two distinct renders of ``scene``'s graph: new jitter in place, and new placement."""
    rng = np.random.default_rng([99, i])
    rejitter = syn.render(scene, size, rng)
    # a fresh scene sampled until its graph (everything but positions) equals this one's
    graph = _graph(scene)
    for _ in range(20_000):
        cand = sample_scene(rng, n_objects=len(scene.objects))
        if _graph(cand) == graph:
            break
    else:  # rare graphs: keep the objects, move them by hand
        cand = replace(scene, objects=tuple(
            replace(o, x=min(max(o.x + 0.08, 0.2), 0.8), y=o.y) for o in scene.objects))
    return [rejitter, syn.render(cand, size, rng)]


def _graph(scene: syn.Scene) -> tuple[object, ...]:
    objs = tuple((o.shape, o.color, o.size) for o in scene.objects)
    rel = None
    if len(scene.objects) == 2:
        a, b = scene.objects
        dx, dy = b.x - a.x, b.y - a.y
        rel = ("left of" if dx > 0 else "right of") if abs(dx) >= abs(dy) else (
            "above" if dy > 0 else "below")
    return (scene.background, objs, rel)


def phash_bits(images: list[Image.Image]) -> np.ndarray:
    import imagehash

    return np.stack([imagehash.phash(im).hash.reshape(-1) for im in images]).astype(bool)


def curve(pos: np.ndarray, neg: np.ndarray, thresholds: np.ndarray) -> dict[str, list[float]]:
    """Precision and recall of "similarity >= t" for each t (pos/neg: similarities of pairs)."""
    prec, rec = [], []
    for t in thresholds:
        tp, fp = float((pos >= t).sum()), float((neg >= t).sum())
        prec.append(tp / (tp + fp) if tp + fp else 1.0)
        rec.append(tp / len(pos))
    return {"threshold": thresholds.tolist(), "precision": prec, "recall": rec}


def best(c: dict[str, list[float]], min_precision: float) -> dict[str, float] | None:
    """The threshold with the highest recall among those reaching ``min_precision``."""
    ok = [j for j, p in enumerate(c["precision"]) if p >= min_precision]
    if not ok:
        return None
    j = max(ok, key=lambda j: (c["recall"][j], -c["threshold"][j]))
    return {k: c[k][j] for k in ("threshold", "precision", "recall")}


def _at(c: dict[str, list[float]], t: float) -> dict[str, float]:
    j = min(range(len(c["threshold"])), key=lambda j: abs(c["threshold"][j] - t))
    return {k: c[k][j] for k in ("threshold", "precision", "recall")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300, help="originals (test split scenes)")
    p.add_argument("--size", type=int, default=256, help="side of the rendered originals")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    model = load_model()
    exs = syn.examples("test", args.n, start=5000, size=args.size)
    originals = [e.image for e in exs]
    variants = {name: [f(im) for im in originals] for name, f in VARIANTS.items()}
    twins = [same_graph_twins(e.scene, i, args.size) for i, e in enumerate(exs)]
    emb = model.encode_images(originals)
    sims_pos: dict[str, np.ndarray] = {}
    ham_pos: dict[str, np.ndarray] = {}
    ph = phash_bits(originals)
    for name, ims in variants.items():
        sims_pos[name] = (model.encode_images(ims) * emb).sum(-1)
        ham_pos[name] = (phash_bits(ims) != ph).sum(-1)
    twin_kinds = {"rejitter": [t[0] for t in twins], "replaced": [t[1] for t in twins]}
    sims_neg: dict[str, np.ndarray] = {}
    ham_neg: dict[str, np.ndarray] = {}
    for name, ims in twin_kinds.items():
        sims_neg[name] = (model.encode_images(ims) * emb).sum(-1)
        ham_neg[name] = (phash_bits(ims) != ph).sum(-1)
    sigs = [signature(im) for im in originals]
    al_pos = {name: np.array([similarity(s, signature(im)) for s, im in zip(sigs, ims,
                                                                           strict=True)])
              for name, ims in variants.items()}
    al_neg = {name: np.array([similarity(s, signature(im)) for s, im in zip(sigs, ims,
                                                                           strict=True)])
              for name, ims in twin_kinds.items()}
    gram = emb @ emb.T
    np.fill_diagonal(gram, -2)
    sims_neg["nearest_other"] = gram.max(1)
    hgram = (ph[:, None, :] != ph[None, :, :]).sum(-1)
    np.fill_diagonal(hgram, 65)
    ham_neg["nearest_other"] = hgram.min(1)
    # the nearest other original by the aligned correlation, among its 5 nearest by embedding
    # (the service verifies the embedding's nearest candidates only)
    near = np.argsort(-gram, axis=1)[:, :5]
    al_neg["nearest_other"] = np.array([max(similarity(sigs[i], sigs[j]) for j in near[i])
                                        for i in range(len(sigs))])

    burst = ("rejitter",)  # reported apart (see the docstring)
    pos = np.concatenate(list(sims_pos.values()))
    neg = np.concatenate([v for k, v in sims_neg.items() if k not in burst])
    apos = np.concatenate(list(al_pos.values()))
    aneg = np.concatenate([v for k, v in al_neg.items() if k not in burst])
    aligned_curve = curve(apos, aneg, np.round(np.arange(0.90, 1.0001, 0.0025), 4))
    cos_curve = curve(pos, neg, np.round(np.arange(0.80, 1.0001, 0.0025), 4))
    # hash: similarity = 64 - Hamming distance, so "higher is closer" like the cosine
    hpos = 64 - np.concatenate(list(ham_pos.values()))
    hneg = 64 - np.concatenate([v for k, v in ham_neg.items() if k not in burst])
    hash_curve = curve(hpos, hneg, np.arange(40, 65, 1.0))
    result: dict[str, Any] = {
        "command": f"python -m bench.quality_duplicates --n {args.n} --size {args.size}",
        "size": args.size,
        "model": model.name,
        "originals": args.n,
        "positive_pairs": int(pos.size),
        "negative_pairs": int(neg.size),
        "cosine": {"curve": cos_curve, "best_at_p98": best(cos_curve, 0.98),
                   "positives_min": {k: float(v.min()) for k, v in sims_pos.items()},
                   "positives_p05": {k: float(np.quantile(v, 0.05)) for k, v in sims_pos.items()},
                   "negatives_max": {k: float(v.max()) for k, v in sims_neg.items()},
                   "negatives_p95": {k: float(np.quantile(v, 0.95)) for k, v in sims_neg.items()}},
        "phash": {"curve": hash_curve, "best_at_p98": best(hash_curve, 0.98),
                  "positives_max_distance": {k: int(v.max()) for k, v in ham_pos.items()},
                  "negatives_min_distance": {k: int(v.min()) for k, v in ham_neg.items()}},
        "aligned": {"curve": aligned_curve, "best_at_p98": best(aligned_curve, 0.98),
                    "service_threshold": DUPLICATE_THRESHOLD,
                    "at_service_threshold": _at(aligned_curve, DUPLICATE_THRESHOLD),
                    "positives_min": {k: float(v.min()) for k, v in al_pos.items()},
                    "positives_p05": {k: float(np.quantile(v, 0.05)) for k, v in al_pos.items()},
                    "negatives_max": {k: float(v.max()) for k, v in al_neg.items()},
                    "negatives_p95": {k: float(np.quantile(v, 0.95)) for k, v in al_neg.items()},
                    "burst_share_over_threshold": float(
                        (al_neg["rejitter"] >= DUPLICATE_THRESHOLD).mean())},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    result["machine"] = machine()  # the CPU's model name and flags, as in every result
    (args.out / "duplicates.json").write_text(json.dumps(result, indent=1))
    _plot(result, args.out / "duplicates.png")
    print(json.dumps({k: v for k, v in result.items() if k not in ("cosine", "phash",
                                                                   "aligned")}))
    print("aligned at the service threshold:", result["aligned"]["at_service_threshold"])
    for kind in ("cosine", "phash", "aligned"):
        r = result[kind]
        print(kind, "best at precision>=0.98:", r["best_at_p98"])
        print({k: v for k, v in r.items() if k not in ("curve", "best_at_p98")})


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, kind, label in ((axes[0], "cosine", "embedding cosine >= t"),
                            (axes[1], "phash", "64 - pHash Hamming distance >= t"),
                            (axes[2], "aligned", "aligned pixel correlation >= t (the rule)")):
        c = result[kind]["curve"]
        ax.plot(c["threshold"], c["precision"], label="precision")
        ax.plot(c["threshold"], c["recall"], label="recall")
        ax.axhline(0.98, color="gray", lw=0.5, ls="--")
        ax.axhline(0.95, color="gray", lw=0.5, ls=":")
        chosen = result[kind].get("at_service_threshold") or result[kind]["best_at_p98"]
        if chosen:
            ax.axvline(chosen["threshold"], color="k", lw=0.8)
        ax.set_xlabel(label)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"near-duplicates: {kind}")
        ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
