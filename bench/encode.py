"""Encoder throughput: images/s and texts/s through ``models/`` against a plain open_clip loop.

Both sides run in this process on the same inputs and batch size: the plain loop is what an
open_clip user writes (``create_model_and_transforms``, the torchvision transform per image,
``encode_image`` / ``encode_text(tokenizer(texts))`` under ``torch.no_grad`` in fp32); ours is
``RetrievalModel.encode_images`` / ``encode_texts`` with the precision chosen automatically.
Both hold the same weights (copied from the plain model), so the cosine between the two
embeddings measures what bf16 and padding trimming change.

Model FLOPs are counted analytically from the module shapes (``torch.utils.flop_counter`` misses
``nn.MultiheadAttention``'s fused fast path) and set against a 2048^3 matmul measured in the same
process, in the precision each side runs in.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from models import load_model
from models.encoder import RetrievalModel, bundled_paths, register_configs
from models.precision import cpu_info

from .common import Options, latency_stats, matmul_gflops, print_table, time_calls, write_json

MODELS = ("fusion-tiny", "ViT-B-32")
BATCH = {"fusion-tiny": 64, "ViT-B-32": 64}  # the ingest command's default --batch
# (images, texts) per timed pass
FULL_SIZES = {"fusion-tiny": (2048, 4096), "ViT-B-32": (128, 256)}
QUICK_SIZES = {"fusion-tiny": (128, 256), "ViT-B-32": (32, 64)}
SHORT_QUERY = "a red circle"
GOAL_IMAGE_SPEEDUP = 3.0
MATMUL_N = 2048  # the matmul a rate is read from
EMULATED_N = 512  # ... for bf16 where the CPU has no bf16 instructions
GOAL_QUERY_SPEEDUP = 5.0
GOAL_COSINE = 0.999


# ---- inputs -------------------------------------------------------------------------------------

def make_inputs(n_images: int, n_texts: int, size: int = 256
                ) -> tuple[list[Image.Image], list[str]]:
    """Generated scenes (RGB, size x size) and their captions, deterministic."""
    from models import synthetic

    images = [synthetic.example("val", i, size=size).image for i in range(n_images)]
    texts = [synthetic.example("val", i, size=8).caption for i in range(n_texts)]
    return images, texts


# ---- FLOPs --------------------------------------------------------------------------------------

def transformer_flops(blocks: torch.nn.Module, seq_len: int) -> int:
    """Multiply-adds x2 of a stack of attention blocks on one sequence of ``seq_len`` tokens."""
    flops = 0
    for mod in blocks.modules():
        if isinstance(mod, torch.nn.MultiheadAttention):
            width = mod.embed_dim
            flops += 2 * seq_len * int(mod.in_proj_weight.numel())  # q, k, v projections
            flops += 4 * seq_len * seq_len * width  # q k^T and attn @ v
        elif isinstance(mod, torch.nn.Linear):  # includes the attention's out_proj
            flops += 2 * seq_len * mod.in_features * mod.out_features
    return flops


def image_flops(clip: Any) -> int:
    """FLOPs of one image through the vision tower (patch embedding, blocks, projection)."""
    v = clip.visual
    grid = int(np.prod(v.grid_size))
    tokens = int(v.positional_embedding.shape[0])
    proj = int(v.proj.numel()) if v.proj is not None else 0
    return 2 * grid * int(v.conv1.weight.numel()) + transformer_flops(v.transformer, tokens) \
        + 2 * proj


def text_flops(clip: Any, length: int) -> int:
    """FLOPs of one text of ``length`` tokens through the text tower."""
    proj = clip.text_projection
    proj_flops = 2 * (proj.weight.numel() if isinstance(proj, torch.nn.Linear) else proj.numel())
    return transformer_flops(clip.transformer, length) + int(proj_flops)


def matmul_size(dtype: torch.dtype) -> int:
    """The matrix size to time ``dtype``'s matmul at: MATMUL_N, except bf16 on a CPU without
    native bf16 (no avx512_bf16 or AMX), which only emulates it — 0.3 GFLOP/s on an AMD EPYC, a
    minute per 2048^3 call — and is timed at EMULATED_N: the rate says the same, that bf16 is
    no use there, in a second."""
    if dtype == torch.bfloat16 and not cpu_info().native_bf16:
        return EMULATED_N
    return MATMUL_N


# ---- the two encoders ---------------------------------------------------------------------------

class PlainClip:
    """The reference: open_clip as its README uses it, fp32, no_grad, padded to 77 tokens."""

    def __init__(self, name: str) -> None:
        register_configs()
        backbone = bundled_paths(name)[0]
        pretrained = str(backbone) if backbone.is_file() else None
        self.clip, _, self.transform = open_clip.create_model_and_transforms(
            name, pretrained=pretrained)
        self.clip.eval()
        self.tokenizer = open_clip.get_tokenizer(name)

    def encode_images(self, images: Sequence[Image.Image], batch: int) -> np.ndarray:
        out = []
        with torch.no_grad():
            for s in range(0, len(images), batch):
                x = torch.stack([self.transform(im) for im in images[s : s + batch]])
                out.append(F.normalize(self.clip.encode_image(x), dim=-1))
        return torch.cat(out).numpy()

    def encode_texts(self, texts: Sequence[str], batch: int) -> np.ndarray:
        out = []
        with torch.no_grad():
            for s in range(0, len(texts), batch):
                ids = self.tokenizer(list(texts[s : s + batch]))
                out.append(F.normalize(self.clip.encode_text(ids), dim=-1))
        return torch.cat(out).numpy()


@functools.cache
def plain_clip(name: str) -> PlainClip:
    """One PlainClip per architecture per process: without weights, building ViT-B-32 (random
    init) costs seconds, and every comparison only reads it."""
    return PlainClip(name)


def ours_for(plain: PlainClip, name: str, batch: int, precision: str = "auto") -> RetrievalModel:
    """``load_model(name)`` holding the plain model's weights (cast to its own precision)."""
    model = load_model(name, precision=precision, batch_size=batch)
    missing, unexpected = model.clip.load_state_dict(plain.clip.state_dict(), strict=False)
    if unexpected or [k for k in missing if not k.endswith("attn_mask")]:
        raise RuntimeError(f"weights do not match: {missing} {unexpected}")
    return model


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float((a * b).sum(-1).min())


def _interleaved(fns: dict[str, Callable[[slice], np.ndarray]], n: int, batch: int,
                 repeats: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Seconds each function needs for all ``n`` inputs, batch by batch: every batch runs
    ``repeats`` times, the sides alternating, and its fastest run counts. A burst of load from
    another process then costs a repeat, not the figure. Also the outputs of the last runs."""
    total = dict.fromkeys(fns, 0.0)
    outs: dict[str, list[np.ndarray]] = {k: [] for k in fns}
    for s in range(0, n, batch):
        part = slice(s, min(s + batch, n))
        best = dict.fromkeys(fns, float("inf"))
        last: dict[str, np.ndarray] = {}
        for _ in range(repeats):
            for key, fn in fns.items():
                t0 = time.perf_counter()
                last[key] = fn(part)
                best[key] = min(best[key], time.perf_counter() - t0)
        for key in fns:
            total[key] += best[key]
            outs[key].append(last[key])
    return total, {k: np.concatenate(v) for k, v in outs.items()}


def bench_model(name: str, opts: Options, rates: dict[str, float]) -> dict[str, Any]:
    """images/s and texts/s of ours vs plain for one architecture, plus cosines and FLOP use."""
    n_img, n_txt = (QUICK_SIZES if opts.quick else FULL_SIZES)[name]
    batch = BATCH[name]
    plain = plain_clip(name)
    ours = ours_for(plain, name, batch)
    size = max(256, ours.image_size[0])
    images, texts = make_inputs(n_img, n_txt, size)
    repeats = 2 if opts.quick else 3
    t_img, o_img = _interleaved({
        "plain": lambda part: plain.encode_images(images[part], batch),
        "ours": lambda part: ours.encode_images(images[part]),
    }, n_img, batch, repeats)
    t_txt, o_txt = _interleaved({
        "plain": lambda part: plain.encode_texts(texts[part], batch),
        "ours": lambda part: ours.encode_texts(texts[part]),
    }, n_txt, batch, repeats)
    ids = ours.tokenize(texts)
    eot = ids.argmax(-1)
    # FLOPs each side spends per text: ours stops at each batch's longest text
    ours_len = float(np.mean([int(eot[s : s + batch].max()) + 1
                              for s in range(0, len(texts), batch)]))
    f_img = image_flops(plain.clip)
    f_txt_ours = text_flops(plain.clip, round(ours_len))
    f_txt_plain = text_flops(plain.clip, ours.context_length)
    ours_rate = rates[ours.precision]
    res: dict[str, Any] = {
        "model": name,
        "precision": ours.precision,
        "batch": batch,
        "images": n_img,
        "texts": n_txt,
        "plain_images_per_s": n_img / t_img["plain"],
        "ours_images_per_s": n_img / t_img["ours"],
        "plain_texts_per_s": n_txt / t_txt["plain"],
        "ours_texts_per_s": n_txt / t_txt["ours"],
        "image_cosine_min": min_cosine(o_img["ours"], o_img["plain"]),
        "text_cosine_min": min_cosine(o_txt["ours"], o_txt["plain"]),
        "image_gflop": f_img / 1e9,
        "text_gflop_plain": f_txt_plain / 1e9,
        "text_gflop_ours": f_txt_ours / 1e9,
        "text_tokens_ours_mean": ours_len,
        "text_tokens_plain": ours.context_length,
    }
    res["image_speedup"] = res["ours_images_per_s"] / res["plain_images_per_s"]
    res["text_speedup"] = res["ours_texts_per_s"] / res["plain_texts_per_s"]
    res["ours_image_matmul_fraction"] = res["ours_images_per_s"] * f_img / 1e9 / ours_rate
    res["plain_image_matmul_fraction"] = res["plain_images_per_s"] * f_img / 1e9 / rates["fp32"]
    res["ours_text_matmul_fraction"] = res["ours_texts_per_s"] * f_txt_ours / 1e9 / ours_rate
    res["plain_text_matmul_fraction"] = (res["plain_texts_per_s"] * f_txt_plain / 1e9
                                         / rates["fp32"])
    return res


# ---- one short query ----------------------------------------------------------------------------

def bench_query(opts: Options) -> dict[str, Any]:
    """Latency of one short text query on ViT-B-32: plain, trimmed fp32, trimmed + auto."""
    name = "ViT-B-32"
    n = 30 if opts.quick else 300
    plain = plain_clip(name)
    trimmed = ours_for(plain, name, 1, precision="fp32")
    ours = ours_for(plain, name, 1)
    ids = plain.tokenizer([SHORT_QUERY])

    def plain_call() -> np.ndarray:
        with torch.no_grad():
            return F.normalize(plain.clip.encode_text(ids), dim=-1).numpy()

    calls: dict[str, Callable[[], np.ndarray]] = {
        "plain_fp32_padded": plain_call,
        "ours_fp32_trimmed": lambda: trimmed.encode_texts([SHORT_QUERY]),
        f"ours_{ours.precision}_trimmed": lambda: ours.encode_texts([SHORT_QUERY]),
    }
    # alternate the variants call by call so that drift in machine load hits all alike
    times: dict[str, list[float]] = {k: [] for k in calls}
    for fn in calls.values():
        fn()
    for _ in tqdm(range(n), desc="query latency", leave=False):
        for key, fn in calls.items():
            times[key] += time_calls(fn, 1, warmup=0)
    ref = plain_call()
    rows = {k: {**latency_stats(v), "cosine": min_cosine(calls[k](), ref)}
            for k, v in times.items()}
    base = rows["plain_fp32_padded"]["p50_ms"]
    for row in rows.values():
        row["speedup_p50"] = base / row["p50_ms"]
    best = rows[f"ours_{ours.precision}_trimmed"]
    return {"query": SHORT_QUERY, "model": name, "precision": ours.precision,
            "query_tokens": int(ids.argmax(-1)[0]) + 1, "context_length": ours.context_length,
            "variants": rows, "speedup_p50": best["speedup_p50"], "cosine": best["cosine"],
            "goal_speedup": GOAL_QUERY_SPEEDUP}


# ---- what else was tried ------------------------------------------------------------------------

def _forward_rate(fn: Callable[[], object], n: int, repeats: int) -> float:
    fn()
    return n / min(time_calls(fn, repeats, warmup=0))


def bench_variants(opts: Options) -> list[dict[str, Any]]:
    """ViT-B-32 vision forward (pixels already prepared) under each setting that was tried."""
    name, batch = "ViT-B-32", BATCH["ViT-B-32"]
    repeats = 2 if opts.quick else 3
    plain = plain_clip(name)
    ours = ours_for(plain, name, batch)
    images, _ = make_inputs(batch, 0)
    pixels = ours.preprocess(images)
    visual = ours.clip.visual
    dtype = ours.dtype
    x = pixels.to(dtype)
    rows: list[dict[str, Any]] = []

    def add(variant: str, fn: Callable[[], object], **extra: Any) -> None:
        rate = _forward_rate(fn, batch, repeats)
        rows.append({"variant": variant, "images_per_s": rate, **extra})
        print(f"  {variant}: {rate:.1f} images/s")

    with torch.no_grad():
        add("fp32 no_grad (plain)", lambda: plain.clip.visual(pixels))
        add(f"{ours.precision} no_grad", lambda: visual(x))
    with torch.inference_mode():
        add(f"{ours.precision} inference_mode (kept)", lambda: visual(x))
        xc = x.contiguous(memory_format=torch.channels_last)
        add(f"{ours.precision} channels_last input", lambda: visual(xc))
        threads = torch.get_num_threads()
        for t in sorted({1, threads, 2 * threads}):
            torch.set_num_threads(t)
            add(f"{ours.precision} {t} threads", lambda: visual(x))
        torch.set_num_threads(threads)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            add("fp32 weights + autocast bf16", lambda: plain.clip.visual(pixels))
    if not opts.quick:
        rows.append(_compiled(visual, x, batch, repeats, ours.precision))
    base = rows[0]["images_per_s"]
    for row in rows:
        row["vs_plain"] = row["images_per_s"] / base
    return rows


def _compiled(visual: torch.nn.Module, x: torch.Tensor, batch: int, repeats: int,
              precision: str) -> dict[str, Any]:
    """torch.compile (inductor) of the vision tower; compile time reported apart."""
    variant = f"{precision} torch.compile"
    try:
        compiled = torch.compile(visual)
        with torch.inference_mode():
            t0 = time.perf_counter()
            compiled(x)
            compile_s = time.perf_counter() - t0
            rate = _forward_rate(lambda: compiled(x), batch, repeats)
    except Exception as exc:  # inductor needs a C++ toolchain; report instead of failing
        return {"variant": variant, "images_per_s": float("nan"), "error": str(exc)[:200]}
    print(f"  {variant}: {rate:.1f} images/s (compile {compile_s:.0f} s)")
    return {"variant": variant, "images_per_s": rate, "compile_s": compile_s}


# ---- entry --------------------------------------------------------------------------------------

def run(opts: Options, models: Sequence[str] = MODELS) -> dict[str, Any]:
    sizes = {"fp32": matmul_size(torch.float32), "bf16": matmul_size(torch.bfloat16)}
    rates = {"fp32": matmul_gflops(torch.float32, sizes["fp32"]),
             "bf16": matmul_gflops(torch.bfloat16, sizes["bf16"])}
    print("matmul: " + ", ".join(f"{k} {rates[k]:.3g} GFLOP/s ({sizes[k]}^3)" for k in rates))
    rows = [bench_model(name, opts, rates) for name in tqdm(models, desc="encode")]
    print_table("encode: images/s and texts/s, ours vs plain open_clip (same process)", rows,
                ["model", "precision", "batch", "plain_images_per_s", "ours_images_per_s",
                 "image_speedup", "image_cosine_min", "plain_texts_per_s", "ours_texts_per_s",
                 "text_speedup", "text_cosine_min", "ours_image_matmul_fraction"])
    result: dict[str, Any] = {"matmul_gflops": rates, "matmul_n": sizes, "models": rows,
                              "goals": {"image_speedup": GOAL_IMAGE_SPEEDUP,
                                        "cosine": GOAL_COSINE}}
    if "ViT-B-32" in models:
        query = bench_query(opts)
        result["query"] = query
        print_table(f"one short query ({query['query']!r}, {query['model']})",
                    [{"variant": k, **v} for k, v in query["variants"].items()],
                    ["variant", "p50_ms", "p99_ms", "mean_ms", "speedup_p50", "cosine"])
        if not opts.quick:
            variants = bench_variants(opts)
            result["variants"] = variants
            print_table("ViT-B-32 vision forward, settings tried", variants,
                        ["variant", "images_per_s", "vs_plain", "compile_s"])
    write_json(opts, "encode", result)
    plot(opts, result)
    return result


def plot(opts: Options, result: dict[str, Any]) -> None:
    from .common import plt_module, save_figure

    plt = plt_module()
    rows = result["models"]
    fig, axes = plt.subplots(1, 2 + ("query" in result), figsize=(4.2 * (2 + ("query" in result)),
                                                                     3.6))
    for ax, kind in zip(axes, ("images", "texts"), strict=False):
        names = [r["model"] for r in rows]
        xs = np.arange(len(names))
        ax.bar(xs - 0.2, [r[f"plain_{kind}_per_s"] for r in rows], 0.4,
               label="plain open_clip fp32")
        ax.bar(xs + 0.2, [r[f"ours_{kind}_per_s"] for r in rows], 0.4,
               label=f"models/ ({rows[0]['precision']})")
        for x, r in zip(xs, rows, strict=True):
            ax.annotate(f"{r[f'ours_{kind}_per_s'] / r[f'plain_{kind}_per_s']:.1f}x",
                        (x + 0.2, r[f"ours_{kind}_per_s"]), ha="center", va="bottom")
        ax.set_xticks(xs, names)
        ax.set_yscale("log")
        ax.set_ylabel(f"{kind}/s")
        ax.set_title(f"{kind}/s (log scale)")
        ax.legend(fontsize=7)
    if "query" in result:
        ax = axes[-1]
        q = result["query"]["variants"]
        ax.bar(range(len(q)), [v["p50_ms"] for v in q.values()])
        ax.set_xticks(range(len(q)), [k.replace("_", "\n") for k in q], fontsize=7)
        ax.set_ylabel("p50 ms")
        ax.set_title("one short query, ViT-B-32")
    save_figure(opts, fig, "encode")
