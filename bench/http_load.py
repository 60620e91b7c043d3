"""HTTP load: a real uvicorn server (subprocess) holding N items, driven by wrk (or httpx).

The collection is bulk-loaded straight into the data dir through ``Store.add_many`` with random
unit embeddings, random float16 patch tokens of the model's shape and small unique PNG files, so
100k items need no image encoding. Then, per server configuration, each load level runs for a
fixed time at a fixed number of concurrent clients (closed loop: each client sends its next
request when the previous one is answered): requests/s, p50/p99 latency and errors.

The searches are driven by ``wrk`` (a C load generator, Debian package ``wrk``; ``make bench``
installs it) with a generated Lua script that cycles through the query list and prints exact
percentiles from its ``done()`` hook: at about 2 ms of CPU per request, the in-process httpx
client took a third of a core from the two-core server it measured. Where ``wrk`` is not on PATH
(or ``FUSION_BENCH_WRK=off``) the async httpx driver runs them instead, and says so. Uploads
(multipart, a unique PNG each, since duplicates are deduplicated by sha256) always use httpx.
The full run also drives search at 4 clients with httpx on the same server, to show what the
Python client costs.

Text search with re-ranking off and on (depth 20, then a server restarted with depth 50), and
uploads of new PNGs. The full run adds the same searches without micro-batching (before/after),
with one torch thread per request, and text search served by ViT-B-32 (random weights: only its
speed matters) over a collection of its own without patch tokens. The server's resident memory
(RSS) is read from /proc, next to the bytes of patch tokens held in the SQLite catalog, to show
those stay on disk.

This module runs the scenarios and writes the result; the collection is in ``http_collection``,
the server in ``http_server``, the httpx driver and the requests in ``http_clients``, the wrk
driver in ``http_wrk``. Their names stay importable from here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .common import (
    Options,
    cpu_seconds,
    latency_stats,
    plt_module,
    print_table,
    save_figure,
    write_json,
)
from .http_clients import SEARCH_PATH, Request, Search, drive, search_request, upload_request
from .http_collection import TAGS, bulk_load, load_with_tokens, png_bytes
from .http_server import MODEL, cpu_ticks, free_port, rss_bytes, server, wait_ready
from .http_wrk import (
    WRK_ENV,
    WRK_MARK,
    WRK_THREADS,
    find_wrk,
    lua_string,
    parse_wrk,
    run_wrk,
    wrk_command,
    wrk_drive,
    wrk_script,
    wrk_version,
)

__all__ = [
    "AUTO_SCENARIOS", "BIG_AUTO_SCENARIO", "BIG_LEVELS", "BIG_MODEL", "COMPARE_LEVEL",
    "WORKERS_ENV", "workers_scenario",
    "FULL_DURATION", "FULL_ITEMS", "GOALS", "HTTPX_COMPARISON", "LEVELS", "MODEL", "QUICK_DURATION",
    "QUICK_ITEMS", "SEARCH_PATH", "TAGS", "WRK_ENV", "WRK_MARK", "WRK_THREADS", "Request",
    "Search", "big_model_dim", "big_model_search", "bulk_load", "checks", "client_description",
    "cold_start", "cpu_ticks", "drive", "find_wrk", "free_port",
    "load_with_tokens", "lua_string", "parse_wrk", "plot", "png_bytes",
    "rss_bytes", "run", "run_levels", "run_wrk", "search_request", "server", "upload_request",
    "wait_ready", "wrk_command", "wrk_drive", "wrk_script", "wrk_version",
]

FULL_ITEMS = 100_000
QUICK_ITEMS = 2_000
FULL_DURATION = 20.0
QUICK_DURATION = 1.0
LEVELS = (1, 4, 16)
BIG_MODEL = "ViT-B-32"
BIG_LEVELS = (1,)
BIG_AUTO_SCENARIO = f"search [{BIG_MODEL}, FUSION_RUNTIME=auto]"
AUTO_SCENARIOS = {"search": "search [FUSION_RUNTIME=auto]",
                  "search+rerank50": "search+rerank50 [FUSION_RUNTIME=auto]"}
# ``serve --workers N`` with N = the cores, one torch thread each, under auto: one process's
# interpreter lock keeps it near 1.3 of 2 cores under 4 clients
WORKERS_ENV = {"FUSION_RERANK_DEPTH": "50", "FUSION_RUNTIME": "auto", "FUSION_TORCH_THREADS": "1"}


def workers_scenario(plain: str, workers: int) -> str:
    return f"{plain} [{workers} workers, FUSION_RUNTIME=auto]"

GOALS = {"search_c4_p50_ms": 10.0, "search_c4_p99_ms": 40.0, "rerank50_c4_p50_ms": 30.0,
         "vit_b32_c1_p50_ms": 20.0}
COMPARE_LEVEL = 4  # full run: search at this many clients with httpx as well, same server
HTTPX_COMPARISON = "search [httpx client]"


def run_levels(name: str, base: str, pid: int, load: Request | Search, duration: float,
               warmup: float, levels: Sequence[int] = LEVELS,
               wrk: str | None = None) -> list[dict[str, Any]]:
    """Each load level in turn: searches through ``wrk`` where given, anything else through
    httpx. Client CPU is this process's plus that of its children that ended meanwhile (the
    wrk runs; the server keeps running, so it is not among them)."""
    rows = []
    for c in levels:
        cpu0, own0, t0 = cpu_ticks(pid), cpu_seconds(children=True), time.perf_counter()
        if wrk is not None and isinstance(load, Search):
            client, row = "wrk", wrk_drive(wrk, base, load, c, duration, warmup)
        else:
            request = load.httpx_request() if isinstance(load, Search) else load
            client, row = "httpx", asyncio.run(drive(base, request, c, duration, warmup))
        wall = time.perf_counter() - t0
        row["server_cpu_cores"] = (cpu_ticks(pid) - cpu0) / wall
        row["client_cpu_cores"] = (cpu_seconds(children=True) - own0) / wall
        rows.append({"scenario": name, "client": client, **row})
        print(f"  {name} c={c} [{client}]: {row['rps']:.0f} req/s p50 {row['p50_ms']:.1f} ms "
              f"p99 {row['p99_ms']:.1f} ms errors {row['errors']}; CPU server "
              f"{row['server_cpu_cores']:.2f}, client {row['client_cpu_cores']:.2f} cores",
              flush=True)
    return rows


# ---- entry --------------------------------------------------------------------------------------

def cold_start(base: str, queries: Sequence[str], n: int) -> dict[str, Any]:
    """Latency of the first ``n`` sequential text queries a fresh server answers."""
    import httpx

    lat = []
    with httpx.Client(base_url=base, timeout=120) as client:
        for i in range(n):
            t0 = time.perf_counter()
            client.post("/api/v1/search/text", json={"query": queries[i], "k": 10,
                                                      "rerank": False}).raise_for_status()
            lat.append(time.perf_counter() - t0)
    return {"requests": n, **latency_stats(lat), "max_ms": round(max(lat) * 1000, 2)}


def run(opts: Options, items: int | None = None, duration: float | None = None,
        uploads: bool = True) -> dict[str, Any]:
    import httpx

    from models import load_model, synthetic

    # one INFO line per request would be client work measured against the server
    logging.getLogger("httpx").setLevel(logging.WARNING)
    n = items or (QUICK_ITEMS if opts.quick else FULL_ITEMS)
    seconds = duration or (QUICK_DURATION if opts.quick else FULL_DURATION)
    warmup = min(0.2, seconds) if opts.quick else 2.0
    n_cold = 20 if opts.quick else 50
    model = load_model(MODEL)
    captions = [synthetic.example("val", i, size=8).caption for i in range(500)]
    queries = [synthetic.example("test", i, size=8).caption for i in range(500)]
    work = Path(tempfile.mkdtemp(prefix="fusion-bench-http-"))
    data_dir = work / "data"
    log = work / "server.log"
    rows: list[dict[str, Any]] = []
    wrk = find_wrk()
    clients = client_description(wrk, len(queries), seconds)
    print(f"load generator: {clients['search']}", flush=True)

    def levels(name: str, base: str, pid: int, load: Request | Search,
               at: Sequence[int] = LEVELS, model_name: str = MODEL, count: int = n,
               driver: str | None = wrk) -> None:
        for row in run_levels(name, base, pid, load, seconds, warmup, at, driver):
            rows.append({**row, "model": model_name, "items": count})

    try:
        loaded, catalog_bytes, token_bytes = load_with_tokens(data_dir, n, model, captions)
        print(f"loaded {n:,} items in {loaded['load_s']:.0f} s ({loaded['factory']}); data dir "
              f"{catalog_bytes / 2**20:.0f} MiB, of which patch tokens {token_bytes / 2**20:.0f} "
              "MiB", flush=True)
        memory: dict[str, Any] = {}
        with server(data_dir, {"FUSION_RERANK_DEPTH": "20"}, log) as (base, pid):
            memory["idle"] = rss_bytes(pid)
            info = httpx.get(f"{base}/api/v1/info").json()
            cold = cold_start(base, queries, n_cold)
            print(f"  cold start: first {cold['requests']} queries p50 {cold['p50_ms']:.1f} ms, "
                  f"max {cold['max_ms']:.0f} ms", flush=True)
            levels("search", base, pid, search_request(queries, False))
            if wrk is not None and not opts.quick:  # what the Python client costs, same server
                levels(HTTPX_COMPARISON, base, pid, search_request(queries, False),
                       (COMPARE_LEVEL,), driver=None)
            levels("search+rerank20", base, pid, search_request(queries, True))
            memory["after_search"] = rss_bytes(pid)
            if uploads:
                levels("upload", base, pid, upload_request(seed=1))
                memory["after_upload"] = rss_bytes(pid)
        if not opts.quick:  # the same server without micro-batching, for before/after
            with server(data_dir, {"FUSION_RERANK_DEPTH": "20", "FUSION_TEXT_BATCH_MAX": "1"},
                        log) as (base, pid):
                cold_start(base, queries, n_cold)
                levels("search, no micro-batching", base, pid, search_request(queries, False))
        with server(data_dir, {"FUSION_RERANK_DEPTH": "50"}, log) as (base, pid):
            cold_start(base, queries, n_cold)
            levels("search+rerank50", base, pid, search_request(queries, True))
        if not opts.quick:  # one torch thread per request instead of the default (all cores)
            with server(data_dir, {"FUSION_RERANK_DEPTH": "50", "FUSION_TORCH_THREADS": "1"},
                        log) as (base, pid):
                cold_start(base, queries, n_cold)
                levels("search [1 torch thread]", base, pid, search_request(queries, False))
                levels("search+rerank50 [1 torch thread]", base, pid,
                       search_request(queries, True))
        runtime_auto: dict[str, Any] = {}
        workers = os.cpu_count() or 1
        from models.runtimes import ENGINES, missing

        if not opts.quick and not all(missing(r) for r in ENGINES):
            # the same collection with each part on the runtime auto's probe picks on this CPU
            with server(data_dir, {"FUSION_RERANK_DEPTH": "50", "FUSION_RUNTIME": "auto"},
                        log) as (base, pid):
                served = httpx.get(f"{base}/api/v1/info", timeout=60).json()
                runtime_auto = {k: served.get(k) for k in
                                ("runtime", "runtime_parts", "runtime_reason")}
                print(f"  FUSION_RUNTIME=auto serves {MODEL} on {served.get('runtime')}",
                      flush=True)
                cold_start(base, queries, n_cold)
                for plain, scenario in AUTO_SCENARIOS.items():
                    levels(scenario, base, pid, search_request(queries, plain != "search"),
                           (1, COMPARE_LEVEL))
            if workers > 1:
                with server(data_dir, WORKERS_ENV, log, workers) as (base, pid):
                    print(f"  serve --workers {workers}, one torch thread each", flush=True)
                    cold_start(base, queries, n_cold)
                    for plain in AUTO_SCENARIOS:
                        levels(workers_scenario(plain, workers), base, pid,
                               search_request(queries, plain != "search"), (1, COMPARE_LEVEL))
        shutil.rmtree(data_dir, ignore_errors=True)  # the disk it holds is not needed any more
        big = big_model_search(work / "data-big", n, captions, queries, log, n_cold, levels,
                               runtime_auto=not opts.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"items": n, "duration_s": seconds, "warmup_s": warmup, "levels": list(LEVELS),
              "model": MODEL,
              "server": {k: info.get(k) for k in ("model", "precision", "has_fusion", "fusion",
                                                   "index", "items", "trained")},
              "bulk_load": loaded, "data_dir_bytes": catalog_bytes, "token_bytes": token_bytes,
              "memory": memory, "cold_start": cold, "big_model": big, "rows": rows,
              "runtime_auto": runtime_auto,
              "workers": {"count": workers, "env": WORKERS_ENV} if runtime_auto else None,
              "goals": GOALS, "checks": checks(rows),
              "client": clients["text"], "clients": clients}
    print_table(f"http: {n:,} items, {seconds:.0f} s per level", rows,
                ["scenario", "model", "concurrency", "rps", "p50_ms", "p99_ms", "errors",
                 "server_cpu_cores", "client_cpu_cores"])
    print(f"server RSS idle {memory['idle']['rss'] / 2**20:.0f} MiB, peak "
          f"{max(m['peak'] for m in memory.values()) / 2**20:.0f} MiB; patch tokens on disk "
          f"{token_bytes / 2**20:.0f} MiB")
    write_json(opts, "http", result)
    plot(opts, result)
    return result


def client_description(wrk: str | None, n_queries: int, seconds: float) -> dict[str, Any]:
    """Which load generator drove what, for the result JSON (``text`` is the sentence the
    report prints)."""
    httpx_text = "httpx.AsyncClient in the benchmark's Python process"
    upload = (f"uploads: {httpx_text} (multipart, a unique PNG each, as the server "
              "deduplicates by sha256)")
    if wrk is None:
        search = f"{httpx_text} (wrk not on PATH)"
        return {"search": search, "upload": "httpx", "wrk": None,
                "text": f"searches: {search}; {upload}; on the same machine as the server"}
    version = wrk_version(wrk)
    search = (f"{version}: up to {WRK_THREADS} threads, one connection per client, a Lua "
              f"script cycling through {n_queries} queries, percentiles from its done() hook")
    return {"search": search, "upload": "httpx", "wrk": version,
            "wrk_command_at_16_clients": shlex.join(wrk_command(
                "wrk", "http://127.0.0.1:PORT", Path("search.lua"), 16, max(1, round(seconds)))),
            "comparison": f"'{HTTPX_COMPARISON}' at {COMPARE_LEVEL} clients (full run only)",
            "text": f"searches: {search}; {upload}; both on the same machine as the server"}


def big_model_dim() -> int:
    """Embedding width of ``BIG_MODEL`` (512 for ViT-B-32), read from its open_clip config."""
    import open_clip

    return int(open_clip.get_model_config(BIG_MODEL)["embed_dim"])


def big_model_search(data_dir: Path, n: int, captions: Sequence[str], queries: Sequence[str],
                     log: Path, n_cold: int, levels: Callable[..., None],
                     runtime_auto: bool = False) -> dict[str, Any]:
    """Text search served by ViT-B-32 over ``n`` items of its own (no patch tokens: it has no
    fusion head to re-rank with). Its weights are random; the cost of a query does not depend
    on them. With ``runtime_auto`` (and ONNX Runtime or OpenVINO installed) the same data dir
    is served a second time with ``FUSION_RUNTIME=auto``: the runtime its probe picks on this
    CPU, and why, go in the result."""
    import httpx

    from models.runtimes import ENGINES, missing

    loaded = bulk_load(data_dir, n, big_model_dim(), None, BIG_MODEL, captions)
    print(f"loaded {n:,} items for {BIG_MODEL} in {loaded['load_s']:.0f} s", flush=True)
    env = {"FUSION_MODEL": BIG_MODEL, "FUSION_RERANK_DEPTH": "20"}
    with server(data_dir, env, log) as (base, pid):
        memory = rss_bytes(pid)
        cold = cold_start(base, queries, n_cold)
        levels(f"search [{BIG_MODEL}]", base, pid, search_request(queries, False), BIG_LEVELS,
               BIG_MODEL, n)
    out = {"model": BIG_MODEL, "items": n, "bulk_load": loaded, "memory_idle": memory,
           "cold_start": cold}
    if runtime_auto and not all(missing(r) for r in ENGINES):
        with server(data_dir, {**env, "FUSION_RUNTIME": "auto"}, log) as (base, pid):
            info = httpx.get(f"{base}/api/v1/info", timeout=60).json()
            out["runtime_auto"] = {"runtime": info.get("runtime"),
                                   "reason": info.get("runtime_reason")}
            print(f"  FUSION_RUNTIME=auto serves {BIG_MODEL} on {info.get('runtime')}",
                  flush=True)
            cold_start(base, queries, n_cold)
            levels(BIG_AUTO_SCENARIO, base, pid, search_request(queries, False), BIG_LEVELS,
                   BIG_MODEL, n)
    return out


def checks(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    def at(scenario: str, c: int) -> dict[str, Any]:
        return next(r for r in rows if r["scenario"] == scenario and r["concurrency"] == c)

    s4, r50, big = at("search", 4), at("search+rerank50", 4), at(f"search [{BIG_MODEL}]", 1)
    return {"search_c4_p50_ms": s4["p50_ms"], "search_c4_p99_ms": s4["p99_ms"],
            "rerank50_c4_p50_ms": r50["p50_ms"], "vit_b32_c1_p50_ms": big["p50_ms"],
            "errors_total": sum(r["errors"] for r in rows),
            "met": {"search_c4_p50": s4["p50_ms"] <= GOALS["search_c4_p50_ms"],
                    "search_c4_p99": s4["p99_ms"] <= GOALS["search_c4_p99_ms"],
                    "rerank50_c4_p50": r50["p50_ms"] <= GOALS["rerank50_c4_p50_ms"],
                    "vit_b32_c1_p50": big["p50_ms"] <= GOALS["vit_b32_c1_p50_ms"],
                    "zero_errors": all(r["errors"] == 0 for r in rows)}}


def plot(opts: Options, result: dict[str, Any]) -> None:
    plt = plt_module()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    scenarios = list(dict.fromkeys(r["scenario"] for r in result["rows"]))
    for s in scenarios:
        rs = [r for r in result["rows"] if r["scenario"] == s]
        cs = [r["concurrency"] for r in rs]
        a1.plot(cs, [r["rps"] for r in rs], "-o", label=s)
        line = a2.plot(cs, [r["p50_ms"] for r in rs], "-o", label=f"{s} p50")[0]
        a2.plot(cs, [r["p99_ms"] for r in rs], "--", color=line.get_color(), label=f"{s} p99")
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(LEVELS), [str(c) for c in LEVELS])
        ax.set_xlabel("concurrent clients")
    a1.set_ylabel("requests/s")
    a2.set_ylabel("latency ms")
    a2.set_yscale("log")
    a1.set_title(f"throughput, {result['items']:,} items")
    a2.set_title("latency (solid p50, dashed p99)")
    a1.legend(fontsize=7)
    a2.legend(fontsize=6, ncol=2)
    save_figure(opts, fig, "http")
