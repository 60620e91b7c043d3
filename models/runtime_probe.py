"""Which runtime serves the model: the setting, or for ``auto`` a probe recorded per CPU.

``auto`` exports the graphs (``models.export``), then times torch at the precision it would
serve against every installed runtime on the same synthetic training scenes: a batch of images,
text queries one at a time, and each query's match against a re-rank's worth of images (the
queries of every length the scenes' captions have: a graph with dynamic shapes may run one
length faster than another; OpenVINO's text graph ran a repeated query as fast as ONNX
Runtime's and a stream of different ones 1.5x slower). Each of the
three parts runs where it is fastest: on the runtime that beats torch on it by at least
:data:`MIN_SPEEDUP` times, among those whose image and text embeddings keep a cosine of at least
:data:`MIN_COSINE` to fp32 torch; on torch otherwise. (One runtime for everything made a
trade: fusion-tiny's query on ONNX Runtime is 2.6x torch's, its re-rank's match 0.5x.)

The probe runs once per (weights, CPU model and flags, thread count, library versions): its
verdict is written beside the exported graphs and read back on the next start, so a server
starts in the time it took before and the choice is the one a benchmark on that machine can
reproduce. It is measured in-process rather than read from a shipped table because the same
"kind" of machine differs (the issue's two Xeons): only this CPU's own timing says.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ModelLoadError
from .export import ExportError, cached_graphs
from .precision import cpu_info, precision_name
from .retrieval import FUSION_KIND, RetrievalModel
from .runtimes import (
    ENGINES,
    MIN_COSINE,
    MIN_SPEEDUP,
    PARTS,
    RUNTIMES,
    Engine,
    build_engine,
    engine_precision,
    missing,
)

log = logging.getLogger(__name__)

PROBE_IMAGES = 8
PROBE_DEPTH = 20  # the service's default re-rank depth
GRAPH = {"images": "image", "text": "text", "match": "match"}  # part -> exported graph
RULE = f"per part >= {MIN_SPEEDUP}x, cosine >= {MIN_COSINE}"
PROBE_VERSION = 2  # bumped when what the probe times changes, so recorded verdicts are redone


def select_runtime(model: RetrievalModel, runtime: str, dtype: torch.dtype,
                   text_dtype: torch.dtype, cache_dir: Path | None = None
                   ) -> tuple[dict[str, Engine], str]:
    """The engine of each part (images, text, match) ``model`` (loaded in fp32) runs on
    anything but torch, and why: ``{}`` is torch for everything.

    ``dtype``/``text_dtype`` are the precisions torch would serve in (``models.precision``).

    Raises:
        ModelLoadError: an explicit runtime that is not installed, runs only on the CPU while
            the model is on a GPU, or whose graphs cannot be exported or loaded.
    """
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return {}, "torch as set"
    on_gpu = model.device.type != "cpu"
    if runtime != "auto":
        why = missing(runtime)
        if why:
            raise ModelLoadError(f"FUSION_RUNTIME={runtime}: {why}")
        if on_gpu:
            raise ModelLoadError(f"FUSION_RUNTIME={runtime} runs on the CPU; the model is on "
                                 f"{model.device} (set FUSION_DEVICE=cpu)")
        precision, why = engine_precision(runtime, dtype)
        engine = build_engine(runtime, _graphs(model, cache_dir)[0], precision,
                              text_macs=model.text_macs)
        return {p: engine for p in PARTS}, f"{runtime} as set, {why}"
    if on_gpu:
        return {}, f"auto: torch, the model runs on {model.device} and the runtimes on the CPU"
    present = [r for r in ENGINES if not missing(r)]
    if not present:
        return {}, (f"auto: torch, neither {' nor '.join(ENGINES)} is installed "
                    "(pip install 'fusion-search[runtimes]')")
    try:
        graphs, key = _graphs(model, cache_dir)
    except ModelLoadError as exc:
        return {}, f"auto: torch, the model could not be exported ({exc})"
    return _auto(model, graphs, present, dtype, text_dtype, key)


def _graphs(model: RetrievalModel, cache_dir: Path | None) -> tuple[dict[str, Path], str]:
    try:
        return cached_graphs(model.clip, model.fusion, FUSION_KIND, model.name, model.image_size,
                             model.token_layer, cache_dir)
    except ExportError as exc:
        raise ModelLoadError(str(exc)) from exc


def probe_key(runtimes: list[str], dtype: torch.dtype, text_dtype: torch.dtype) -> str:
    """What a recorded verdict depends on besides the weights (which name its folder)."""
    import importlib.metadata as md

    cpu = cpu_info()
    versions = []
    for r in runtimes:
        try:
            versions.append(f"{r}={md.version(r)}")
        except md.PackageNotFoundError:
            versions.append(f"{r}=?")
    return "|".join([cpu.model, ",".join(cpu.flags), f"threads={torch.get_num_threads()}",
                     f"torch={torch.__version__}", *versions,
                     f"rule={RULE}", f"probe={PROBE_VERSION}", precision_name(dtype),
                     precision_name(text_dtype)])


def _auto(model: RetrievalModel, graphs: dict[str, Path], present: list[str],
          dtype: torch.dtype, text_dtype: torch.dtype, weights: str
          ) -> tuple[dict[str, Engine], str]:
    record = graphs["image"].parent / "auto.json"
    key = probe_key(present, dtype, text_dtype)
    try:
        verdicts = json.loads(record.read_text())
    except (OSError, ValueError):
        verdicts = {}
    verdict = verdicts.get(key)
    if verdict is None or "parts" not in verdict:
        verdict = probe(model, graphs, present, dtype, text_dtype)
        verdict["weights"] = weights
        verdicts[key] = verdict
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(verdicts, indent=2) + "\n")
        tmp.replace(record)
        reason = f"auto: {verdict['reason']} (probed at this first load, recorded in {record})"
    else:
        reason = f"auto: {verdict['reason']} (recorded in {record} for this CPU)"
    return _engines(verdict["parts"], graphs, model.text_macs), reason


def _engines(parts: Mapping[str, Mapping[str, str] | None], graphs: dict[str, Path],
             text_macs: int) -> dict[str, Engine]:
    """One engine per (runtime, precision) the verdict names, loading only its parts' graphs."""
    wanted: dict[tuple[str, str], list[str]] = {}
    for part, pick in parts.items():
        if pick is not None:
            wanted.setdefault((pick["runtime"], pick["precision"]), []).append(part)
    out: dict[str, Engine] = {}
    for (runtime, precision), names in wanted.items():
        engine = build_engine(runtime, {GRAPH[p]: graphs[GRAPH[p]] for p in names}, precision,
                              text_macs=text_macs)
        out.update(dict.fromkeys(names, engine))
    return out


def _best_seconds(fn: Callable[[], object], reps: int) -> float:
    fn()  # the first call sets up kernels and buffers
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _min_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() * b.float()).sum(-1).min())


def probe(model: RetrievalModel, graphs: dict[str, Path], present: list[str],
          dtype: torch.dtype, text_dtype: torch.dtype, reps: int = 3) -> dict[str, Any]:
    """Time torch (at ``dtype``/``text_dtype``) against each runtime in ``present`` and pick.

    Returns ``{"parts": {part: {"runtime", "precision"} or None for torch}, "reason",
    "candidates": {...}}``.
    """
    from . import synthetic as syn

    examples = syn.examples("train", PROBE_IMAGES)
    pixels = model.preprocess([e.image for e in examples])
    ids = model.tokenize([e.caption for e in examples])
    with torch.inference_mode():
        ref_emb, ref_tok = model._images_forward(pixels)
        ref_text = model._texts_forward(ids).emb
    served = model
    if dtype != torch.float32 or text_dtype != torch.float32:
        served = RetrievalModel(model.name, copy.deepcopy(model.clip), model.tokenizer,
                                trained=model.trained, fusion=model.fusion, dtype=dtype,
                                text_dtype=text_dtype)
    reps_t = max(1, PROBE_DEPTH // PROBE_IMAGES + 1)
    tokens = ref_tok.float().repeat(reps_t, 1, 1)[:PROBE_DEPTH].numpy().astype(np.float16)
    embs = ref_emb.repeat(reps_t, 1)[:PROBE_DEPTH].numpy()
    # one query at a time, as a server gets them, of every length the examples have: a graph
    # with dynamic shapes may run one length fast and another slowly
    queries = [[e.caption] for e in examples]

    def each(fn: Callable[[list[str]], object]) -> Callable[[], object]:
        return lambda: [fn(q) for q in queries]

    def timings(m: RetrievalModel) -> dict[str, float]:
        with torch.inference_mode():
            t = {"images": _best_seconds(lambda: m._images_forward(pixels), reps),
                 "text": _best_seconds(each(lambda q: m._texts_forward(m.tokenize(q))),
                                       reps * 2) / len(queries)}
            if m.fusion is not None:
                t["match"] = _best_seconds(each(lambda q: m.match(tokens, q, embs)),
                                           reps) / len(queries)
        return t

    base = timings(served)
    torch_name = (f"torch {precision_name(dtype)}" if dtype == text_dtype else
                  f"torch {precision_name(dtype)} (text {precision_name(text_dtype)})")
    candidates: dict[str, Any] = {}
    for runtime in present:
        precision = engine_precision(runtime, dtype)[0]
        try:
            engine = build_engine(runtime, graphs, precision, text_macs=model.text_macs)
        except ModelLoadError as exc:
            candidates[f"{runtime} {precision}"] = {"ok": False, "why": str(exc)}
            continue
        model.use_engine(engine, "probe")
        try:
            with torch.inference_mode():
                emb, _ = model._images_forward(pixels)
                text = model._texts_forward(ids).emb
            t = timings(model)
        finally:
            model.use_engine(None, "torch")
        ratios = {k: base[k] / t[k] for k in base}
        cos = min(_min_cos(emb, ref_emb), _min_cos(text, ref_text))
        candidates[f"{runtime} {precision}"] = {
            "runtime": runtime, "precision": precision, "ok": cos >= MIN_COSINE,
            "ratios": {k: round(v, 2) for k, v in ratios.items()}, "cosine": round(cos, 5)}
    picks = pick_parts(candidates)
    parts = {p: (None if name is None else {"runtime": candidates[name]["runtime"],
                                            "precision": candidates[name]["precision"]})
             for p, name in picks.items()}
    summary = "; ".join(_describe(name, c) for name, c in candidates.items())
    chosen = ", ".join(f"{p} on {name or torch_name}" for p, name in picks.items())
    return {"parts": parts, "candidates": candidates,
            "reason": f"{chosen} (a part leaves torch for a runtime >= {MIN_SPEEDUP}x "
                      f"{torch_name} on it with cosine >= {MIN_COSINE} to fp32 torch); "
                      f"{summary}"}


def pick_parts(candidates: Mapping[str, Mapping[str, Any]]) -> dict[str, str | None]:
    """``auto``'s rule: for each part the candidates were timed on (images, text, match), the
    candidate that runs it fastest, if at least :data:`MIN_SPEEDUP` times torch on it and its
    quality passes (``ok``); None keeps the part on torch.

    ``candidates`` maps a name to ``{"ok": bool, "ratios": {part: speed against torch}}``.
    """
    out: dict[str, str | None] = {}
    for part in PARTS:
        timed = [(c["ratios"][part], name) for name, c in candidates.items()
                 if part in c.get("ratios", {})]
        if not timed:
            continue
        fit = [(x, name) for x, name in timed
               if x >= MIN_SPEEDUP and candidates[name].get("ok")]
        out[part] = max(fit)[1] if fit else None
    return out


def _describe(name: str, c: Mapping[str, Any]) -> str:
    if "ratios" not in c:
        return f"{name}: {c['why']}"
    parts = ", ".join(f"{k} {v}x" for k, v in c["ratios"].items())
    return f"{name} {parts}, cosine {c['cosine']}"

