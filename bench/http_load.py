"""HTTP load: a real uvicorn server (subprocess) holding N items, driven by async httpx clients.

The collection is bulk-loaded straight into the data dir through ``Store.add_many`` with random
unit embeddings, random float16 patch tokens of the model's shape and small unique PNG files, so
100k items need no image encoding. Then, per server configuration, each load level runs for a
fixed time at a fixed number of concurrent clients (closed loop: each client sends its next
request when the previous one is answered): requests/s, p50/p99 latency and errors.

Text search with re-ranking off and on (depth 20, then a server restarted with depth 50), and
uploads of new PNGs. The full run adds the same searches without micro-batching (before/after),
with one torch thread per request, and text search served by ViT-B-32 (random weights: only its
speed matters) over a collection of its own without patch tokens. The server's resident memory
(RSS) is read from /proc, next to the bytes of patch tokens held in the SQLite catalog, to show
those stay on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from index import Store, Upload

from .common import (
    Options,
    cpu_seconds,
    latency_stats,
    plt_module,
    print_table,
    save_figure,
    write_json,
)

MODEL = "fusion-tiny"
FULL_ITEMS = 100_000
QUICK_ITEMS = 2_000
FULL_DURATION = 20.0
QUICK_DURATION = 1.0
LEVELS = (1, 4, 16)
BIG_MODEL = "ViT-B-32"
BIG_LEVELS = (1,)
TAGS = ("red", "green", "blue", "indoor", "outdoor", "large", "small")
GOALS = {"search_c4_p50_ms": 10.0, "search_c4_p99_ms": 40.0, "rerank50_c4_p50_ms": 30.0,
         "vit_b32_c1_p50_ms": 20.0}
_LOAD_BATCH = 1000

Request = Callable[[Any, int], Awaitable[Any]]


# ---- the collection -----------------------------------------------------------------------------

def png_bytes(i: int, size: int = 8, seed: int = 0) -> bytes:
    """A small PNG that differs for every ``i``."""
    rng = np.random.default_rng([seed, i])
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def bulk_load(data_dir: Path, n: int, dim: int, tokens: tuple[int, int] | None, model_name: str,
              captions: Sequence[str]) -> dict[str, Any]:
    """Fill a data dir with ``n`` synthetic items through Store.add_many (with random patch
    tokens of shape ``tokens``, or none); returns the seconds it took and the index type."""
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with Store.open(data_dir, dim=dim, model_name=model_name, snapshot_every=10**9) as store:
        for start in tqdm(range(0, n, _LOAD_BATCH), desc=f"bulk load {n:,}", leave=False):
            count = min(_LOAD_BATCH, n - start)
            emb = rng.standard_normal((count, dim), dtype=np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            tok = (rng.standard_normal((count, *tokens), dtype=np.float32).astype(np.float16)
                   if tokens else None)
            uploads = []
            for j in range(count):
                data = png_bytes(start + j)
                uploads.append(Upload(
                    data=data, sha256=hashlib.sha256(data).hexdigest(), ext="png",
                    content_type="image/png", embedding=emb[j],
                    tokens=tok[j] if tok is not None else None, width=8,
                    height=8, caption=captions[(start + j) % len(captions)],
                    tags=[TAGS[(start + j) % len(TAGS)]]))
            store.add_many(uploads)
        factory = store.stats()["factory"]
    return {"load_s": time.perf_counter() - t0, "factory": factory}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---- the server ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> dict[str, int]:
    """Current and peak resident set size of a process (VmRSS / VmHWM)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return {"rss": out.get("VmRSS", 0), "peak": out.get("VmHWM", 0)}


def cpu_ticks(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(data_dir: Path, env: dict[str, str], log: Path) -> Iterator[tuple[str, int]]:
    """A uvicorn process serving the app on a free port: yields (base url, pid)."""
    port = free_port()
    full_env = {**os.environ, "FUSION_DATA_DIR": str(data_dir), "FUSION_MODEL": MODEL,
                "HF_HUB_OFFLINE": "1", **env}
    cmd = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
           "--no-access-log"]
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, env=full_env, stdout=fh, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[1])
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(base, proc, timeout=600)
        except (RuntimeError, TimeoutError):
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see its log")
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError("server not ready")


# ---- the load generator -------------------------------------------------------------------------

async def drive(base: str, request: Request, concurrency: int, duration: float,
                warmup: float) -> dict[str, Any]:
    """Closed-loop load: ``concurrency`` clients for ``duration`` s after ``warmup`` s."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    lat: list[float] = []
    errors: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        counter = iter(range(10**12))

        async def worker(until: float, keep: bool) -> None:
            while time.perf_counter() < until:
                t0 = time.perf_counter()
                try:
                    r = await request(client, next(counter))
                    ok, why = r.status_code < 300, str(r.status_code)
                except httpx.HTTPError as exc:
                    ok, why = False, type(exc).__name__
                if keep and ok:
                    lat.append(time.perf_counter() - t0)
                elif keep:
                    errors[why] = errors.get(why, 0) + 1

        end = time.perf_counter() + warmup
        await asyncio.gather(*(worker(end, False) for _ in range(concurrency)))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(t0 + duration, True) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": len(lat), "rps": len(lat) / wall,
            "errors": sum(errors.values()), "error_kinds": errors, **latency_stats(lat)}


def search_request(queries: Sequence[str], rerank: bool) -> Request:
    async def request(client: Any, i: int) -> Any:
        body = {"query": queries[i % len(queries)], "k": 10, "rerank": rerank}
        return await client.post("/api/v1/search/text", json=body)

    return request


def upload_request(seed: int) -> Request:
    async def request(client: Any, i: int) -> Any:
        data = png_bytes(i, size=64, seed=seed)
        return await client.post("/api/v1/images",
                                 files=[("files", (f"u{i}.png", data, "image/png"))])

    return request


def run_levels(name: str, base: str, pid: int, request: Request, duration: float,
               warmup: float, levels: Sequence[int] = LEVELS) -> list[dict[str, Any]]:
    rows = []
    for c in levels:
        cpu0, own0, t0 = cpu_ticks(pid), cpu_seconds(), time.perf_counter()
        row = asyncio.run(drive(base, request, c, duration, warmup))
        wall = time.perf_counter() - t0
        row["server_cpu_cores"] = (cpu_ticks(pid) - cpu0) / wall
        row["client_cpu_cores"] = (cpu_seconds() - own0) / wall
        rows.append({"scenario": name, **row})
        print(f"  {name} c={c}: {row['rps']:.0f} req/s p50 {row['p50_ms']:.1f} ms "
              f"p99 {row['p99_ms']:.1f} ms errors {row['errors']}", flush=True)
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

    def levels(name: str, base: str, pid: int, request: Request,
               at: Sequence[int] = LEVELS, model_name: str = MODEL, count: int = n) -> None:
        for row in run_levels(name, base, pid, request, seconds, warmup, at):
            rows.append({**row, "model": model_name, "items": count})

    try:
        loaded = bulk_load(data_dir, n, model.embed_dim,
                           (model.num_image_tokens, model.image_token_width), model.name,
                           captions)
        catalog_bytes = dir_bytes(data_dir)
        token_bytes = n * model.num_image_tokens * model.image_token_width * 2
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
        shutil.rmtree(data_dir, ignore_errors=True)  # the disk it holds is not needed any more
        big = big_model_search(work / "data-big", n, captions, queries, log, n_cold, levels)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"items": n, "duration_s": seconds, "warmup_s": warmup, "levels": list(LEVELS),
              "model": MODEL,
              "server": {k: info.get(k) for k in ("model", "precision", "has_fusion", "fusion",
                                                   "index", "items", "trained")},
              "bulk_load": loaded, "data_dir_bytes": catalog_bytes, "token_bytes": token_bytes,
              "memory": memory, "cold_start": cold, "big_model": big, "rows": rows,
              "goals": GOALS, "checks": checks(rows),
              "client": "httpx.AsyncClient, one process on the same machine as the server"}
    print_table(f"http: {n:,} items, {seconds:.0f} s per level", rows,
                ["scenario", "model", "concurrency", "rps", "p50_ms", "p99_ms", "errors",
                 "server_cpu_cores", "client_cpu_cores"])
    print(f"server RSS idle {memory['idle']['rss'] / 2**20:.0f} MiB, peak "
          f"{max(m['peak'] for m in memory.values()) / 2**20:.0f} MiB; patch tokens on disk "
          f"{token_bytes / 2**20:.0f} MiB")
    write_json(opts, "http", result)
    plot(opts, result)
    return result


def big_model_search(data_dir: Path, n: int, captions: Sequence[str], queries: Sequence[str],
                     log: Path, n_cold: int, levels: Callable[..., None]) -> dict[str, Any]:
    """Text search served by ViT-B-32 over ``n`` items of its own (no patch tokens: it has no
    fusion head to re-rank with). Its weights are random; the cost of a query does not depend
    on them."""
    import open_clip

    dim = int(open_clip.get_model_config(BIG_MODEL)["embed_dim"])
    loaded = bulk_load(data_dir, n, dim, None, BIG_MODEL, captions)
    print(f"loaded {n:,} items for {BIG_MODEL} in {loaded['load_s']:.0f} s", flush=True)
    with server(data_dir, {"FUSION_MODEL": BIG_MODEL, "FUSION_RERANK_DEPTH": "20"},
                log) as (base, pid):
        memory = rss_bytes(pid)
        cold = cold_start(base, queries, n_cold)
        levels(f"search [{BIG_MODEL}]", base, pid, search_request(queries, False), BIG_LEVELS,
               BIG_MODEL, n)
    return {"model": BIG_MODEL, "items": n, "bulk_load": loaded, "memory_idle": memory,
            "cold_start": cold}


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
