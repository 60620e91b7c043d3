"""Calibrated match probabilities: temperature scaling of the attention head, fitted out of
distribution, with reliability diagrams.

The pairs are the ones the service scores: each query's top ``depth`` images by the dual
encoder, labelled by the scene graph (a caption is true of the image or not). A temperature and
a bias are fitted on the OOD *validation* split (``ood-val``) by minimising the negative
log-likelihood (a temperature alone cannot move probabilities that are too high everywhere);
the OOD test split and the in-distribution test split only measure them. ``match`` then returns
``sigmoid(logit / T + bias)``; re-ranking blends ``T * logit(match)``, the raw logit plus a
constant per query, so calibration changes what a match probability means and never the order
of the hits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from . import synthetic as syn
from .evaluate import (
    World,
    _rank,
    encode_for_fusion,
    in_distribution,
    out_of_distribution,
    pair_logits,
)
from .retrieval import FUSION_KIND, RetrievalModel

BINS = 15


def match_pairs(model: RetrievalModel, world: World, n: int, depth: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(raw attention-head logits, labels) of every query's top-``depth`` gallery images."""
    if model.fusion is None:
        raise ValueError("a model without fusion heads has no match head to calibrate")
    qs = world.gallery(n)
    emb, tok = model.encode_images_with_tokens([q.image for q in qs])
    texts = [q.caption for q in qs]
    cand = _rank(model.encode_texts(texts) @ emb.T, depth)
    rows, cols = cand.ravel(), np.repeat(np.arange(len(qs)), cand.shape[1])
    logits = pair_logits(model, FUSION_KIND, tok, emb, rows, cols, encode_for_fusion(model, texts))
    labels = np.array([syn.claim_true(qs[c].claim, qs[r].scene) for r, c in zip(rows, cols,
                                                                               strict=True)])
    return logits.astype(np.float64), labels.astype(np.float64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = np.clip(_sigmoid(logits / temperature), 1e-12, 1 - 1e-12)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood (golden-section search on
    log T over [1/20, 20]; the NLL is convex in 1/T)."""
    lo, hi = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    for _ in range(80):
        if nll(logits, labels, math.exp(a)) < nll(logits, labels, math.exp(b)):
            hi, b = b, a
            a = hi - g * (hi - lo)
        else:
            lo, a = a, b
            b = lo + g * (hi - lo)
    return round(math.exp((lo + hi) / 2), 4)


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(temperature, bias) minimising the NLL of ``sigmoid(logit / T + bias)``: a one-feature
    logistic regression (convex), by Newton's method with step halving on standardised logits.

    Raises ValueError when the logits rank false captions above true ones (no T > 0 fits)."""
    mu, sd = float(logits.mean()), float(logits.std()) or 1.0
    x = np.stack([(logits - mu) / sd, np.ones_like(logits)], 1)

    def loss(w: np.ndarray) -> float:
        z = x @ w
        return float(np.mean(np.logaddexp(0, z) - labels * z))

    w = np.zeros(2)
    for _ in range(100):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - labels) / len(x)
        hess = (x * (p * (1 - p))[:, None]).T @ x / len(x) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while loss(w - scale * step) > loss(w) and scale > 1e-6:
            scale /= 2
        w = w - scale * step
        if np.abs(scale * step).max() < 1e-10:
            break
    if w[0] <= 0:
        raise ValueError("the match head's logits do not rank true captions above false ones")
    a = w[0] / sd  # logit / T + bias = a * logit + (w1 - a * mu)
    return round(float(1 / a), 4), round(float(w[1] - a * mu), 4)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """Expected calibration error and the per-bin (confidence, accuracy, count) of a diagram."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    conf, acc, count = [], [], []
    ece = 0.0
    for b in range(bins):
        m = idx == b
        count.append(int(m.sum()))
        conf.append(float(probs[m].mean()) if m.any() else None)
        acc.append(float(labels[m].mean()) if m.any() else None)
        if m.any():
            ece += m.mean() * abs(float(probs[m].mean()) - float(labels[m].mean()))
    return {"ece": round(ece, 4), "confidence": conf, "accuracy": acc, "count": count}


def plot(diagrams: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Reliability diagrams, one panel per data set, before and after temperature scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(diagrams), figsize=(4.2 * len(diagrams), 4.2))
    for ax, (title, curves) in zip(np.atleast_1d(axes), diagrams.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="perfect")
        for label, d in curves.items():
            pts = [(c, a) for c, a in zip(d["confidence"], d["accuracy"], strict=True)
                   if c is not None]
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"{label} (ECE {d['ece']:.3f})")
        ax.set_title(title)
        ax.set_xlabel("match probability")
        ax.set_ylabel("fraction of true captions")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def calibrate(model: RetrievalModel, n: int = 1000, depth: int = 20,
              plot_path: Path | None = None) -> dict[str, Any]:
    """Fit the temperature on ``ood-val``; measure ECE before and after on it, on ``ood-test``
    and on the in-distribution test split. Raises ValueError without fusion heads."""
    sets = {"OOD validation (fitted)": out_of_distribution("ood-val"),
            "OOD test": out_of_distribution("ood-test"),
            "in distribution (test)": in_distribution()}
    pairs = {name: match_pairs(model, w, n, depth) for name, w in sets.items()}
    fitted = pairs["OOD validation (fitted)"]
    t_only = fit_temperature(*fitted)
    t, bias = fit_platt(*fitted)
    curves = {"raw": (1.0, 0.0), f"T = {t_only:.2f}": (t_only, 0.0),
              f"T = {t:.2f}, bias {bias:+.2f}": (t, bias)}
    diagrams = {name: {label: reliability(_sigmoid(lg / tt + bb), lb)
                       for label, (tt, bb) in curves.items()}
                for name, (lg, lb) in pairs.items()}
    if plot_path is not None:
        plot(diagrams, plot_path)
    kinds = dict(zip(("raw", "temperature", "temperature_and_bias"), curves, strict=True))
    return {"temperature": t, "bias": bias, "temperature_alone": t_only, "fitted_on": "ood-val",
            "gallery": n, "depth": depth,
            "pairs": {k: int(len(v[0])) for k, v in pairs.items()},
            "positives": {k: round(float(v[1].mean()), 4) for k, v in pairs.items()},
            "ece": {name: {kind: d[label]["ece"] for kind, label in kinds.items()}
                    for name, d in diagrams.items()}}


def write_temperature(fusion_json: Path, result: dict[str, Any]) -> None:
    """Record the fitted temperature in a fusion-head JSON file (read by ``load_model``)."""
    meta = json.loads(fusion_json.read_text())
    meta["calibration"] = result
    fusion_json.write_text(json.dumps(meta, indent=2) + "\n")
