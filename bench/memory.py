"""Server memory and latency end to end: a real uvicorn server holding N items (1,000,000 in the
full run), its resident set size idle and after re-ranked searches next to the bytes its data dir
holds on disk, and search latency over HTTP at 1 and 4 clients with re-ranking on.

The collection is bulk-loaded like the HTTP benchmark's (``Store.add_many`` with random unit
embeddings, random float16 patch tokens of the bundled model's shape and small unique PNGs), so
the patch tokens re-ranking reads are really there: the figure shows they stay in the SQLite
catalog on disk and are read per query, not held in the server's heap.

A second collection of the same size holds ViT-B-32-sized vectors (512-d, random weights: the
cost of a query does not depend on them) and is searched without re-ranking: ViT-B-32 has no
fusion head, and its patch tokens (50 x 768 float16 per image, 77 GB at 1,000,000) would not fit
on the disk of the machines this runs on.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import Options, plt_module, print_table, save_figure, write_json
from .http_load import (
    BIG_MODEL,
    MODEL,
    TAGS,
    big_model_dim,
    bulk_load,
    cold_start,
    dir_bytes,
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
# seconds per level, after a warm-up; the quick run's must hold a few of ViT-B-32's queries
# (100+ ms each on 2 busy cores) or a level can end with none answered
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


def measure(n: int, captions: list[str], queries: list[str], work: Path,
            searches: int = SEARCHES, seconds: float = FULL_DURATION) -> dict[str, Any]:
    """Bulk-load ``n`` items, serve them, read the server's RSS idle and after searching, then
    search latency with re-ranking at 1 and 4 clients."""
    import httpx

    from models import load_model

    model = load_model(MODEL)
    data_dir = work / f"data-{n}"
    log = work / "server.log"
    try:
        loaded, on_disk, token_bytes = load_with_tokens(data_dir, n, model, captions)
        t0 = time.perf_counter()
        with server(data_dir, {"FUSION_RERANK_DEPTH": "50"}, log) as (base, pid):
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
            levels = latency("search+rerank50", base, pid, queries, True, seconds)
            after = rss_bytes(pid)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    row = {"items": n, "model": MODEL, "dim": model.embed_dim, "rerank": True,
           "index": info.get("index"), "load_s": loaded["load_s"],
           "start_s": start_s, "rss_idle": idle["rss"], "rss_after_search": busy["rss"],
           "rss_after_latency": after["rss"], "rss_peak": after["peak"],
           "data_dir_bytes": on_disk, "token_bytes": token_bytes, "searches": searches,
           "latency": levels}
    print(f"  {n:,} items ({row['index']}): RSS idle {idle['rss'] / 2**20:.0f} MiB, after "
          f"{searches} re-ranked searches {busy['rss'] / 2**20:.0f} MiB (peak "
          f"{after['peak'] / 2**20:.0f} MiB); on disk {on_disk / 2**30:.2f} GiB, of which patch "
          f"tokens {token_bytes / 2**30:.2f} GiB", flush=True)
    return row


def measure_big(n: int, captions: list[str], queries: list[str], work: Path,
                seconds: float = FULL_DURATION) -> dict[str, Any]:
    """``n`` items of ViT-B-32's 512-d vectors, no patch tokens: RSS and latency without
    re-ranking."""
    import httpx

    dim = big_model_dim()
    data_dir = work / f"data-{n}-big"
    log = work / "server-big.log"
    try:
        loaded = bulk_load(data_dir, n, dim, None, BIG_MODEL, captions)
        on_disk = dir_bytes(data_dir)
        t0 = time.perf_counter()
        with server(data_dir, {"FUSION_MODEL": BIG_MODEL}, log) as (base, pid):
            start_s = time.perf_counter() - t0
            idle = rss_bytes(pid)
            info = httpx.get(f"{base}/api/v1/info", timeout=60).json()
            levels = latency(f"search [{BIG_MODEL}]", base, pid, queries, False, seconds)
            after = rss_bytes(pid)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"  {n:,} items of {BIG_MODEL} ({info.get('index')}): RSS idle "
          f"{idle['rss'] / 2**20:.0f} MiB, after searching {after['rss'] / 2**20:.0f} MiB",
          flush=True)
    return {"items": n, "model": BIG_MODEL, "dim": dim, "rerank": False,
            "index": info.get("index"), "load_s": loaded["load_s"], "start_s": start_s,
            "rss_idle": idle["rss"], "rss_after_search": after["rss"],
            "rss_after_latency": after["rss"], "rss_peak": after["peak"],
            "data_dir_bytes": on_disk, "token_bytes": 0, "searches": 0, "latency": levels}


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
            rows.append(measure_big(n, captions, queries, work, seconds))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"model": MODEL, "big_model": BIG_MODEL, "rerank_depth": 50, "levels": list(LEVELS),
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
