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
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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
SEARCH_PATH = "/api/v1/search/text"
WRK_ENV = "FUSION_BENCH_WRK"  # "off" forces httpx; a path or name picks that wrk binary
WRK_THREADS = 2  # wrk threads at most (each drives concurrency/threads connections)
COMPARE_LEVEL = 4  # full run: search at this many clients with httpx as well, same server
HTTPX_COMPARISON = "search [httpx client]"

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


def load_with_tokens(data_dir: Path, n: int, model: Any, captions: Sequence[str]
                     ) -> tuple[dict[str, Any], int, int]:
    """``bulk_load`` with random patch tokens of ``model``'s shape: its result, the bytes the
    data dir then holds and the bytes of patch tokens among them."""
    tokens = (model.num_image_tokens, model.image_token_width)
    loaded = bulk_load(data_dir, n, model.embed_dim, tokens, model.name, captions)
    return loaded, dir_bytes(data_dir), n * tokens[0] * tokens[1] * 2


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


@dataclass(frozen=True)
class Search:
    """Text searches cycling through ``queries``: what either client sends."""

    queries: Sequence[str]
    rerank: bool

    def body(self, i: int) -> dict[str, Any]:
        return {"query": self.queries[i % len(self.queries)], "k": 10, "rerank": self.rerank}

    def httpx_request(self) -> Request:
        async def request(client: Any, i: int) -> Any:
            return await client.post(SEARCH_PATH, json=self.body(i))

        return request


def search_request(queries: Sequence[str], rerank: bool) -> Search:
    return Search(tuple(queries), rerank)


# ---- wrk ----------------------------------------------------------------------------------------

WRK_MARK = "FUSION_WRK"
_WRK_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s {"duration_us": %.0f, "requests": %.0f, "bytes": %.0f, "connect": %.0f, "read": %.0f, '
    .. '"write": %.0f, "status": %.0f, "timeout": %.0f, "p50_us": %.0f, "p90_us": %.0f, '
    .. '"p99_us": %.0f, "mean_us": %.1f, "max_us": %.0f}\\n',
    MARK, summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
"""


def find_wrk() -> str | None:
    """The wrk binary to drive searches with: ``$FUSION_BENCH_WRK`` (a path or name; "off"
    for none), else ``wrk`` on PATH; None where there is none."""
    choice = os.environ.get(WRK_ENV, "").strip()
    if choice.lower() in ("0", "off", "no", "none", "httpx"):
        return None
    return shutil.which(choice or "wrk")


def wrk_version(wrk: str) -> str:
    """``wrk debian/4.1.0-3+b2 [epoll]``: the first line ``wrk --version`` prints."""
    proc = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    first = (proc.stdout + proc.stderr).strip().splitlines()[:1]
    return first[0].split(" Copyright")[0].strip() if first else "wrk"


def lua_string(text: str) -> str:
    """A Lua string literal of ``text`` (bytes outside printable ASCII as decimal escapes)."""
    out = []
    for b in text.encode():
        ch = chr(b)
        out.append("\\" + ch if ch in '"\\' else ch if 32 <= b < 127 else f"\\{b:03d}")
    return '"' + "".join(out) + '"'


def wrk_script(search: Search, threads: int) -> str:
    """The Lua script wrk runs: each thread formats one POST per query up front, then cycles
    through them from its own offset; ``done()`` prints one ``FUSION_WRK {json}`` line with
    the exact percentiles in microseconds."""
    bodies = ",\n".join("  " + lua_string(json.dumps(search.body(i)))
                        for i in range(len(search.queries)))
    return f"""-- written by bench/http_load.py for one wrk run
local bodies = {{
{bodies}
}}
local prepared = {{}}
local i = 0
local threads = 0
MARK = "{WRK_MARK}"

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  for n, body in ipairs(bodies) do
    prepared[n] = wrk.format("POST", {lua_string(SEARCH_PATH)},
                             {{["Content-Type"] = "application/json"}}, body)
  end
  i = (id or 0) * math.floor(#prepared / {threads})
end

function request()
  i = i % #prepared + 1
  return prepared[i]
end
{_WRK_DONE}"""


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(text: str) -> dict[str, Any]:
    """The figures of one wrk run from its stdout: from the ``FUSION_WRK`` line that the
    script's ``done()`` prints (exact percentiles), else from wrk's own report (``--latency``
    percentiles, rounded as wrk prints them). ``requests`` and ``rps`` count the answers
    below 400; ``errors`` are the other answers plus socket errors, by kind."""
    for line in text.splitlines():
        if line.startswith(WRK_MARK + " "):
            d = json.loads(line[len(WRK_MARK) + 1:])
            kinds = {k: int(d[k]) for k in ("status", "connect", "read", "write", "timeout")}
            duration, answered = d["duration_us"] / 1e6, int(d["requests"])
            p = {q: d[f"p{q}_us"] / 1000 for q in (50, 90, 99)}
            mean, source = d["mean_us"] / 1000, "lua done()"
            break
    else:
        m = re.search(r"^\s*(\d+) requests in ([\d.]+\w+),", text, re.M)
        if not m:
            raise ValueError("no wrk report in its output:\n" + text[-2000:])
        answered, duration = int(m.group(1)), _seconds(m.group(2))
        p = {int(q): _seconds(v) * 1000
             for q, v in re.findall(r"^\s*(\d+)%\s+([\d.]+\w+)\s*$", text, re.M)}
        if not {50, 90, 99} <= set(p):
            raise ValueError("no latency distribution in the wrk report (run it with --latency)")
        lat = re.search(r"^\s*Latency\s+([\d.]+\w+)\s", text, re.M)
        mean, source = (_seconds(lat.group(1)) * 1000 if lat else float("nan")), "wrk --latency"
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                         r"timeout (\d+)", text)
        status = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        kinds = {"status": int(status.group(1)) if status else 0,
                 **{k: int(sock.group(i)) if sock else 0
                    for i, k in enumerate(("connect", "read", "write", "timeout"), 1)}}
    ok = answered - kinds["status"]
    errors = {("status>=400" if k == "status" else k): v for k, v in kinds.items() if v}
    return {"requests": ok, "rps": ok / duration if duration else 0.0,
            "errors": sum(errors.values()), "error_kinds": errors,
            "p50_ms": round(p[50], 4), "p90_ms": round(p[90], 4), "p99_ms": round(p[99], 4),
            "mean_ms": round(mean, 4), "n": ok, "duration_s": round(duration, 3),
            "percentiles_from": source}


def wrk_command(wrk: str, base: str, script: Path, concurrency: int, seconds: int) -> list[str]:
    threads = min(concurrency, WRK_THREADS)
    return [wrk, f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "60s",
            "--latency", "-s", str(script), base + SEARCH_PATH]


def run_wrk(wrk: str, base: str, script: Path, concurrency: int, seconds: float) -> str:
    """One wrk run; its stdout. wrk takes whole seconds: a shorter or fractional time is cut
    with SIGINT, after which wrk stops and reports as at the end of ``-d`` (its report gives
    the time it really ran)."""
    whole = seconds >= 1 and float(seconds).is_integer()
    cmd = wrk_command(wrk, base, script, concurrency, int(seconds) if whole
                      else max(1, math.ceil(seconds)))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not whole:
        time.sleep(seconds)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=math.ceil(seconds) + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited with {proc.returncode}:\n{err}{out}")
    return out


def wrk_drive(wrk: str, base: str, search: Search, concurrency: int, duration: float,
              warmup: float) -> dict[str, Any]:
    """Closed-loop load with wrk: ``concurrency`` connections for ``duration`` s after a wrk
    run of ``warmup`` s whose figures are dropped."""
    with tempfile.TemporaryDirectory(prefix="fusion-wrk-") as tmp:
        script = Path(tmp) / "search.lua"
        script.write_text(wrk_script(search, min(concurrency, WRK_THREADS)))
        if warmup > 0:
            run_wrk(wrk, base, script, concurrency, warmup)
        out = run_wrk(wrk, base, script, concurrency, duration)
    return {"concurrency": concurrency, **parse_wrk(out),
            "threads": min(concurrency, WRK_THREADS)}


def upload_request(seed: int) -> Request:
    async def request(client: Any, i: int) -> Any:
        data = png_bytes(i, size=64, seed=seed)
        return await client.post("/api/v1/images",
                                 files=[("files", (f"u{i}.png", data, "image/png"))])

    return request


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
