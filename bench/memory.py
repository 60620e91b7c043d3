"""Server memory and latency end to end: a real uvicorn server holding N items (1,000,000 in the
full run), its resident set size idle and after re-ranked searches next to the bytes its data dir
holds on disk, and search latency over HTTP at 1 and 4 clients with re-ranking on.

The collection is bulk-loaded like the HTTP benchmark's (``Store.add_many`` with random unit
embeddings, random float16 patch tokens of the model's shape and small unique PNGs), so the patch
tokens re-ranking reads are really there: the figure shows they stay in the SQLite catalog on disk
and are read per query, not held in the server's heap.

A second collection of the same size holds ViT-B-32-sized vectors (512-d) and is re-ranked too.
ViT-B-32 itself has no fusion head, and its patch tokens (50 x 768 float16 per image, 77 GB at
1,000,000) would not fit on the disk of the machines this runs on, so the second server runs
``fusion-tiny-512``: the bundled architecture with 512-d embeddings and an attention head, random
weights (the cost of a query does not depend on them), loaded the way a user loads their own
model, from an open_clip ``local-dir:`` folder and ``FUSION_FUSION_WEIGHTS``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import Options, plt_module, print_table, save_figure, write_json
from .http_load import (
    MODEL,
    TAGS,
    cold_start,
    find_wrk,
    load_with_tokens,
    rss_bytes,
    run_levels,
    search_request,
    server,
)

FULL_ITEMS = (1_000_000,)
QUICK_ITEMS = (500,)
SEARCHES = 200  # re-ranked text searches (depth 50) before the second reading
QUICK_SEARCHES = 40
LEVELS = (1, 4)  # concurrent clients for the latency figures
# seconds per level, after a warm-up; the quick run's must hold a few re-ranked queries even
# on 2 busy cores, or a level can end with none answered
FULL_DURATION, QUICK_DURATION = 20.0, 2.0


def latency(name: str, base: str, pid: int, queries: list[str], rerank: bool,
            seconds: float) -> list[dict[str, Any]]:
    """p50/p99 of text searches at each of ``LEVELS`` clients (wrk where installed)."""
    cold_start(base, queries, 10)  # the first queries load what the model loads lazily
    warmup = min(2.0, seconds / 4)
    return [{k: r[k] for k in ("scenario", "client", "concurrency", "rps", "p50_ms", "p99_ms",
                               "errors")}
            for r in run_levels(name, base, pid, search_request(queries, rerank), seconds,
                                warmup, LEVELS, find_wrk())]


WIDE_MODEL = "fusion-tiny-512"  # the second collection's model: ViT-B-32-sized vectors
WIDE_DIM = 512


def wide_model(folder: Path) -> tuple[str, str]:
    """Write ``WIDE_MODEL`` into ``folder``: the bundled architecture with ``WIDE_DIM``-d
    embeddings as an open_clip ``local-dir:`` model, and an attention fusion head for it (random
    weights, seed 0). Returns (``FUSION_MODEL``, ``FUSION_FUSION_WEIGHTS``)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from models.encoder import CONFIG_DIR, LOCAL_DIR, WEIGHTS_DIR
    from models.fusion import FusionConfig, FusionHeads

    folder.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((CONFIG_DIR / f"{MODEL}.json").read_text())
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": {**cfg, "embed_dim": WIDE_DIM}}))
    name = f"{LOCAL_DIR}{folder}"
    head_cfg = {**json.loads((WEIGHTS_DIR / f"{MODEL}.fusion.json").read_text())["config"],
                "embed_dim": WIDE_DIM}
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "no weights found": they are written next
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            clip = open_clip.create_model(name)
            heads = FusionHeads(FusionConfig(**head_cfg), ("attention",))
    finally:
        logging.getLogger().setLevel(quiet)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    fusion = folder / "heads.fusion.safetensors"
    save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(fusion))
    (folder / "heads.fusion.json").write_text(
        json.dumps({"config": head_cfg, "kinds": ["attention"], "compose": False}))
    return name, str(fusion)


def measure(n: int, captions: list[str], queries: list[str], work: Path,
            searches: int = SEARCHES, seconds: float = FULL_DURATION,
            wide: bool = False) -> dict[str, Any]:
    """Bulk-load ``n`` items, serve them, read the server's RSS idle and after searching, then
    search latency with re-ranking at 1 and 4 clients; on the bundled model, or with ``wide``
    on ``WIDE_MODEL``'s 512-d vectors."""
    import httpx

    from models import load_model

    env = {"FUSION_RERANK_DEPTH": "50"}
    label, fusion = MODEL, None
    if wide:
        name, fusion = wide_model(work / WIDE_MODEL)
        env |= {"FUSION_MODEL": name, "FUSION_FUSION_WEIGHTS": fusion}
        label = WIDE_MODEL
    model = load_model(env.get("FUSION_MODEL", MODEL), fusion=fusion)
    data_dir = work / f"data-{n}-{label}"
    log = work / f"server-{label}.log"
    try:
        loaded, on_disk, token_bytes = load_with_tokens(data_dir, n, model, captions)
        t0 = time.perf_counter()
        with server(data_dir, env, log) as (base, pid):
            start_s = time.perf_counter() - t0
            idle = rss_bytes(pid)
            info = httpx.get(f"{base}/api/v1/info", timeout=60).json()
            with httpx.Client(base_url=base, timeout=60) as client:
                for i in range(searches):
                    body = {"query": queries[i % len(queries)], "k": 10, "rerank": True,
                            **({"tags": [TAGS[i % len(TAGS)]]} if i % 4 == 3 else {})}
                    r = client.post("/api/v1/search/text", json=body)
                    r.raise_for_status()
            busy = rss_bytes(pid)
            levels = latency(f"search+rerank50 [{label}]" if wide else "search+rerank50", base,
                             pid, queries, True, seconds)
            after = rss_bytes(pid)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    row = {"items": n, "model": label, "dim": model.embed_dim, "rerank": True,
           "index": info.get("index"), "load_s": loaded["load_s"],
           "start_s": start_s, "rss_idle": idle["rss"], "rss_after_search": busy["rss"],
           "rss_after_latency": after["rss"], "rss_peak": after["peak"],
           "data_dir_bytes": on_disk, "token_bytes": token_bytes, "searches": searches,
           "latency": levels}
    print(f"  {n:,} items of {label} ({row['index']}): RSS idle {idle['rss'] / 2**20:.0f} MiB, "
          f"after {searches} re-ranked searches {busy['rss'] / 2**20:.0f} MiB (peak "
          f"{after['peak'] / 2**20:.0f} MiB); on disk {on_disk / 2**30:.2f} GiB, of which patch "
          f"tokens {token_bytes / 2**30:.2f} GiB", flush=True)
    return row


def run(opts: Options, items: list[int] | None = None) -> dict[str, Any]:
    from models import synthetic

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    sizes = items or list(QUICK_ITEMS if opts.quick else FULL_ITEMS)
    captions = [synthetic.example("val", i, size=8).caption for i in range(500)]
    queries = [synthetic.example("test", i, size=8).caption for i in range(500)]
    work = Path(tempfile.mkdtemp(prefix="fusion-bench-memory-"))
    try:
        searches = QUICK_SEARCHES if opts.quick else SEARCHES
        seconds = QUICK_DURATION if opts.quick else FULL_DURATION
        rows = []
        for n in sizes:
            rows.append(measure(n, captions, queries, work, searches, seconds))
            rows.append(measure(n, captions, queries, work, searches, seconds, wide=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"model": MODEL, "wide_model": WIDE_MODEL, "rerank_depth": 50, "levels": list(LEVELS),
              "duration_s": seconds, "rows": rows}
    print_table("server memory", [
        {**r, **{k: r[k] / 2**20 for k in ("rss_idle", "rss_after_search", "rss_peak")},
         "data_dir_gib": r["data_dir_bytes"] / 2**30, "token_gib": r["token_bytes"] / 2**30}
        for r in rows],
        ["items", "model", "index", "rss_idle", "rss_after_search", "rss_peak", "data_dir_gib",
         "token_gib", "load_s", "start_s"])
    print_table("search latency end to end", [
        {"items": r["items"], "model": r["model"], "rerank": r["rerank"], **lat}
        for r in rows for lat in r["latency"]],
        ["items", "model", "rerank", "concurrency", "rps", "p50_ms", "p99_ms", "errors"])
    write_json(opts, "memory", result)
    plot(opts, rows)
    return result


def plot(opts: Options, rows: list[dict[str, Any]]) -> None:
    """Resident memory against what the data dir holds on disk, per collection size."""
    plt = plt_module()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = [f"{r['items']:,} items, {r.get('model', MODEL)}" for r in rows]
    y = range(len(rows))
    bars = (("server RSS, peak", "rss_peak"), ("patch tokens on disk", "token_bytes"),
            ("data dir on disk", "data_dir_bytes"))
    height = 0.8 / len(bars)
    for j, (name, key) in enumerate(bars):
        ax.barh([i + j * height for i in y], [r[key] / 2**30 for r in rows], height, label=name)
    ax.set_yticks([i + height for i in y], labels)
    ax.set_xlabel("GiB")
    ax.set_title("server memory against bytes kept on disk")
    ax.legend(fontsize=7)
    save_figure(opts, fig, "memory")
