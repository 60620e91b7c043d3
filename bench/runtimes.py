"""Runtimes: torch, ONNX Runtime and OpenVINO in fp32, bf16 and int8, against plain open_clip.

For each model and each runtime x precision, in one process on the same weights and inputs:
images/s (batches of generated scenes), one short text query's latency, one query's match
against a re-rank's worth of stored tokens, the cosine of the image and text embeddings to
fp32 torch, and for the bundled (trained) model text->image R@1 and attention re-rank R@1 on
the test split and the out-of-distribution set (``models.evaluate``'s worlds and metrics on a
smaller gallery). A random-weight model's R@1 says nothing and is not measured.

``torch auto`` is what the service runs without ``FUSION_RUNTIME`` (bf16 where the CPU has
AVX-512 BF16 or AMX); ``plain open_clip`` is the README's fp32 loop. Every speed ratio is
against fp32 torch and against torch auto of the same run.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models import load_model
from models.evaluate import _rank, in_distribution, out_of_distribution, recall_at
from models.export import cached_graphs, default_cache_dir
from models.fusion import Batch
from models.precision import native_bf16
from models.rerank import rerank_scores
from models.retrieval import FUSION_KIND, RetrievalModel
from models.runtime_probe import pick_parts
from models.runtimes import MIN_COSINE, MIN_SPEEDUP, build_engine, missing

from . import runtime_int8
from .common import Options, latency_stats, print_table, time_calls, write_json
from .encode import SHORT_QUERY, PlainClip, make_inputs, min_cosine

MODELS = ("fusion-tiny", "ViT-B-32")
# images per forward: the ingest command's default --batch for both (ViT-B-32 ran in batches of
# 16 until 2026-12-03; bf16 gains more than fp32 from the larger batch on AMX)
BATCH = {"fusion-tiny": 64, "ViT-B-32": 64}
# (images per timed pass, timed calls per latency, R@1 gallery)
FULL = {"fusion-tiny": (512, 60, 300), "ViT-B-32": (128, 30, 0)}
QUICK = {"fusion-tiny": (32, 5, 30), "ViT-B-32": (16, 5, 0)}
CALIBRATION = {True: 16, False: runtime_int8.CALIBRATION_SCENES}  # scenes, by quick
RERANK_DEPTH = 50
INT8_R1_TOLERANCE = 0.005


def variants(bf16: bool) -> list[tuple[str, str]]:
    """(runtime, precision) pairs measured beside torch fp32, torch auto and plain open_clip."""
    out = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32")]
    if bf16:
        out.append(("openvino", "bf16"))
    return [*out, ("openvino", "int8")]


def _images_rate(forward: Callable[[torch.Tensor], object], pixels: list[torch.Tensor],
                 repeats: int = 2) -> float:
    """Images per second of the image encoder's forward (embedding and patch tokens) on
    preprocessed batches: the fastest repeat of each batch, summed, so a burst of other load
    costs a repeat and not the figure."""
    total = 0.0
    with torch.inference_mode():
        forward(pixels[0])  # kernels, buffers
        for px in pixels:
            total += min(time_calls(functools.partial(forward, px), repeats, 0))
    return sum(len(px) for px in pixels) / total


def _match_call(m: RetrievalModel, tok: np.ndarray, emb: np.ndarray) -> Callable[[], object]:
    reps = -(-RERANK_DEPTH // len(tok))
    tokens = np.concatenate([tok] * reps)[:RERANK_DEPTH]
    embs = np.concatenate([emb] * reps)[:RERANK_DEPTH]
    return lambda: m.match(tokens, [SHORT_QUERY], embs)


@functools.cache
def _galleries(n: int) -> tuple[tuple[str, list[Any], np.ndarray], ...]:
    """(split, queries, relevance) of the test and OOD worlds' ``n``-scene galleries, rendered
    once for every variant."""
    from models import synthetic as syn

    out = []
    for world in (in_distribution(), out_of_distribution()):
        qs = world.gallery(n)
        rel = np.array([[syn.claim_true(q.claim, g.scene) for g in qs] for q in qs])
        out.append(("test" if world.name == "in_distribution" else "ood", qs, rel))
    return tuple(out)


def _quality(m: RetrievalModel, gallery: int) -> dict[str, float]:
    """t2i R@1 and attention re-rank R@1 (depth 20, blended as the service does) per world."""
    out: dict[str, float] = {}
    for key, qs, rel in _galleries(gallery):
        emb, tok = m.encode_images_with_tokens([q.image for q in qs])
        texts = [q.caption for q in qs]
        sims = m.encode_texts(texts) @ emb.T
        ranked = _rank(sims, 20)
        out[f"t2i_r1_{key}"] = round(recall_at(ranked, rel, 1), 4)
        if m.fusion is None:
            continue
        with torch.inference_mode():
            tb = m._texts_forward(m.tokenize(texts))
        cand = ranked[:, :20]
        rows, cols = cand.ravel(), np.repeat(np.arange(len(qs)), cand.shape[1])
        logits = []
        for s in range(0, len(rows), 500):
            r, c = rows[s : s + 500], torch.as_tensor(cols[s : s + 500])
            b = Batch(torch.from_numpy(tok[r].astype(np.float32)), torch.from_numpy(emb[r]),
                      tb.tokens[c].float(), tb.pad[c], tb.eot[c], tb.emb[c])
            logits.append(m.match_logits(b).float().numpy())
        probs = m.calibrated(torch.from_numpy(np.concatenate(logits))).numpy()
        blended = rerank_scores(np.take_along_axis(sims, cand, 1), probs.reshape(cand.shape),
                                m.temperature)
        order = np.argsort(-blended, axis=1, kind="stable")
        out[f"rerank_r1_{key}"] = round(recall_at(np.take_along_axis(cand, order, 1), rel, 1), 4)
    return out


def _measure(label: str, m: RetrievalModel, images: list[Any], pixels: list[torch.Tensor],
             n_queries: int, ref: dict[str, Any], gallery: int) -> dict[str, Any]:
    row: dict[str, Any] = {"variant": label, "runtime": m.runtime, "precision": m.precision}
    row["images_per_s"] = round(_images_rate(m._images_forward, pixels), 2)
    row["query"] = latency_stats(time_calls(lambda: m.encode_texts([SHORT_QUERY]), n_queries, 3))
    row["query_p50_ms"] = row["query"]["p50_ms"]
    emb, tok = m.encode_images_with_tokens(images[:8])
    if m.has_fusion:
        row["rerank"] = latency_stats(time_calls(_match_call(m, tok, emb), n_queries, 2))
        row[f"rerank{RERANK_DEPTH}_p50_ms"] = row["rerank"]["p50_ms"]
    row["image_cosine"] = round(min_cosine(emb, ref["images"]), 5)
    row["text_cosine"] = round(min_cosine(m.encode_texts(ref["texts_in"]), ref["texts"]), 5)
    if gallery:
        row.update(_quality(m, gallery))
    return row


def bench_model(name: str, opts: Options, cache: Path) -> dict[str, Any]:
    """Every variant of one model, plus the plain open_clip loop on the same weights."""
    n_images, n_q, gallery = (QUICK if opts.quick else FULL)[name]
    batch = BATCH[name]
    fp32 = load_model(name, precision="fp32", batch_size=batch)
    # scenes at the model's input size: the timed forward starts from normalised pixels
    images, texts = make_inputs(n_images, 16, size=fp32.image_size[0])
    pixels = [fp32.preprocess(images[s : s + batch]) for s in range(0, len(images), batch)]
    trained = fp32.trained and fp32.has_fusion
    gallery = gallery if trained else 0  # a random-weight model's R@1 says nothing
    ref: dict[str, Any] = {"images": fp32.encode_images(images[:8]), "texts_in": texts,
           "texts": fp32.encode_texts(texts)}
    t0 = time.perf_counter()
    graphs, key = cached_graphs(fp32.clip, fp32.fusion, FUSION_KIND, fp32.name, fp32.image_size,
                                fp32.token_layer, cache)
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    int8 = (runtime_int8.quantize_graphs(graphs, fp32, graphs["image"].parent /
                                         f"int8-{CALIBRATION[opts.quick]}",
                                         CALIBRATION[opts.quick])
            if not missing("onnxruntime") else None)
    quantize_s = time.perf_counter() - t0
    rows = [_plain_row(name, fp32, pixels, n_q, ref)]
    rows.append(_measure("torch fp32", fp32, images, pixels, n_q, ref, gallery))
    auto = load_model(name, precision="auto", batch_size=batch)
    rows.append(_measure(f"torch auto ({auto.precision})", auto, images, pixels, n_q, ref,
                         gallery))
    del auto
    for runtime, precision in tqdm(variants(native_bf16()), desc=name, leave=False):
        label = f"{runtime} {precision}"
        why = missing(runtime) or (None if precision != "int8" or int8 else "no int8 graphs")
        if why:
            rows.append({"variant": label, "runtime": runtime, "precision": precision,
                         "skipped": why})
            continue
        source = int8 if precision == "int8" and int8 else graphs
        engine = build_engine(runtime, source, "bf16" if precision == "bf16" else "fp32",
                              text_macs=fp32.text_macs)
        engine.precision = precision
        fp32.use_engine(engine, "bench")
        try:
            rows.append(_measure(label, fp32, images, pixels, n_q, ref, gallery))
        finally:
            fp32.use_engine(None, "torch")
    _ratios(rows)
    return {"model": name, "weights": key, "trained": trained, "batch": batch,
            "images": len(images), "export_s": round(export_s, 1),
            "quantize_s": round(quantize_s, 1), "rows": rows, "auto": _auto_verdict(rows)}


def _plain_row(name: str, fp32: RetrievalModel, pixels: list[torch.Tensor], n_q: int,
               ref: dict[str, Any]) -> dict[str, Any]:
    plain = PlainClip(name)
    # the same weights, random or bundled (the causal mask is a buffer each side builds)
    plain.clip.load_state_dict(fp32.clip.state_dict(), strict=False)
    ids = plain.tokenizer([SHORT_QUERY])

    def query() -> np.ndarray:
        with torch.no_grad():
            return torch.nn.functional.normalize(plain.clip.encode_text(ids), dim=-1).numpy()

    def encode(px: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # what an open_clip user writes
            return plain.clip.encode_image(px)  # type: ignore[no-any-return]

    q = latency_stats(time_calls(query, n_q, 3))
    first = torch.nn.functional.normalize(encode(pixels[0][:8]), dim=-1).numpy()
    return {"variant": "plain open_clip fp32", "runtime": "torch", "precision": "fp32",
            "images_per_s": round(_images_rate(encode, pixels), 2), "query": q,
            "query_p50_ms": q["p50_ms"],
            "image_cosine": round(min_cosine(first, ref["images"]), 5),
            "text_cosine": round(min_cosine(plain.encode_texts(ref["texts_in"], 16),
                                            ref["texts"]), 5)}


def _ratios(rows: list[dict[str, Any]]) -> None:
    base = {r["variant"].split(" (")[0]: r for r in rows}
    for r in rows:
        if "skipped" in r:
            continue
        for ref_name in ("torch fp32", "torch auto"):
            b = base[ref_name]
            tag = ref_name.replace(" ", "_")
            r[f"images_x_{tag}"] = round(r["images_per_s"] / b["images_per_s"], 2)
            r[f"query_x_{tag}"] = round(b["query_p50_ms"] / r["query_p50_ms"], 2)
            key = f"rerank{RERANK_DEPTH}_p50_ms"
            if key in r and key in b:
                r[f"rerank_x_{tag}"] = round(b[key] / r[key], 2)


def _auto_verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``FUSION_RUNTIME=auto``'s rule says on these figures, part by part (int8 included,
    with its R@1 check), as a record beside the service's own probe."""
    torch_auto = next(r for r in rows if r["variant"].startswith("torch auto"))
    candidates = {}
    for r in rows:
        if r["runtime"] == "torch" or "skipped" in r:
            continue
        ratios = {"images": r["images_x_torch_auto"], "text": r["query_x_torch_auto"]}
        if "rerank_x_torch_auto" in r:
            ratios["match"] = r["rerank_x_torch_auto"]
        if r["precision"] == "int8":
            drops = [torch_auto[k] - r[k] for k in r if k.endswith(("_r1_test", "_r1_ood"))]
            ok_quality = bool(drops) and max(drops) <= INT8_R1_TOLERANCE
            quality = f"R@1 drop {max(drops):.3f}" if drops else "R@1 not measured"
        else:
            ok_quality = min(r["image_cosine"], r["text_cosine"]) >= MIN_COSINE
            quality = f"cosine {min(r['image_cosine'], r['text_cosine'])}"
        candidates[r["variant"]] = {"ratios": ratios, "quality": quality, "ok": ok_quality}
    parts = {p: name or torch_auto["variant"] for p, name in pick_parts(candidates).items()}
    return {"parts": parts, "candidates": candidates, "against": torch_auto["variant"]}


def describe_parts(parts: dict[str, str]) -> str:
    """``images: torch auto (fp32), text: onnxruntime fp32, ...``"""
    return ", ".join(f"{p}: {name}" for p, name in parts.items())


def run(opts: Options, models: Sequence[str] = MODELS) -> dict[str, Any]:
    cache = default_cache_dir()  # the service's own cache: graphs are keyed by weights hash
    results = [bench_model(name, opts, cache) for name in models]
    cols = ["variant", "images_per_s", "images_x_torch_fp32", "images_x_torch_auto",
            "query_p50_ms", "query_x_torch_auto", f"rerank{RERANK_DEPTH}_p50_ms",
            "rerank_x_torch_auto", "image_cosine", "text_cosine", "t2i_r1_test", "t2i_r1_ood",
            "rerank_r1_test", "rerank_r1_ood"]
    for res in results:
        print_table(f"runtimes: {res['model']} (batch {res['batch']}, {res['images']} images; "
                    f"auto's rule picks {describe_parts(res['auto']['parts'])})", res["rows"], cols)
    result = {"models": results, "rerank_depth": RERANK_DEPTH, "query": SHORT_QUERY,
              "int8": runtime_int8.describe(CALIBRATION[opts.quick]),
              "rule": {"min_speedup": MIN_SPEEDUP, "per_part": True, "min_cosine": MIN_COSINE,
                       "int8_r1_tolerance": INT8_R1_TOLERANCE}}
    write_json(opts, "runtimes", result)
    plot(opts, result)
    return result


def plot(opts: Options, result: dict[str, Any]) -> None:
    from .common import plt_module, save_figure

    plt = plt_module()
    models = result["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 3.4 * len(models)), squeeze=False)
    for (ax_img, ax_q), res in zip(axes, models, strict=True):
        rows = [r for r in res["rows"] if "skipped" not in r]
        names = [r["variant"] for r in rows]
        ys = np.arange(len(rows))
        ax_img.barh(ys, [r["images_per_s"] for r in rows])
        ax_img.set_yticks(ys, names, fontsize=7)
        ax_img.set_xlabel("images/s")
        ax_img.set_title(f"{res['model']}: images/s")
        ax_q.barh(ys, [r["query_p50_ms"] for r in rows])
        ax_q.set_yticks(ys, names, fontsize=7)
        ax_q.set_xlabel("ms (p50)")
        ax_q.set_title(f"{res['model']}: one text query")
    save_figure(opts, fig, "runtimes")
