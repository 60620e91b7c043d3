"""Several server processes on one data dir: how long another process takes to see an upload
(catch-up lag), and text searches per second with 1 and 2 uvicorn workers.

- Store lag (no model, no HTTP, seconds to run): this process commits items one at a time, at
  random moments, through a shared ``Store``; a second process holding the same data dir
  records when its follower has applied each one. The mechanism's own lag: the follow interval
  plus reading and applying the log. ``python -m bench.replicas --store-only``.
- Lag: two `uvicorn` servers on one data dir; after each upload to one is answered, the other's
  ``/api/v1/info`` is read every few milliseconds until its vector count includes the upload
  (its follower applied the change log). Uploads alternate between the two. Reported p50/p99.
- Throughput: `fusion-search serve --workers N` over a bulk-loaded collection (random vectors and
  patch tokens of the bundled model's shapes), text searches (no re-rank) from a closed loop of
  ``CONCURRENCY`` httpx clients for ``duration`` seconds, N = 1 then 2.

Each worker is a whole process (model, FAISS copy): on a machine with C cores, N workers help
only while C exceeds what one worker's event loop plus torch threads keep busy. The figures say
what the cores were doing besides (``machine.loadavg_1_5_15``).

    fusion-search bench replicas [--quick] [--out DIR] [--items N] [--duration S]
    python -m bench.replicas --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .common import Options, latency_stats, print_table, resolve_out, write_json
from .http_clients import drive, search_request
from .http_collection import load_with_tokens, png_bytes
from .http_server import MODEL, free_port, server, wait_for_workers, wait_ready

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 8
POLL_S = 0.002
LAG_TIMEOUT_S = 30.0
WORKERS = (1, 2)


def _env() -> dict[str, str]:
    """One torch thread per worker: N workers then use N cores, the comparison's point."""
    return {"FUSION_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _vectors(client: Any) -> int:
    resp = client.get("/api/v1/info")
    resp.raise_for_status()
    return int(resp.json()["vectors"])


_FOLLOWER = """
import json, sys, threading, time
from pathlib import Path
from index import Store
store = Store.open(Path(sys.argv[1]), 16, "bench-lag", shared=True)
seen, done = {}, threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
print("ready", flush=True)
last = store.seq
while not done.is_set():
    if store.seq != last:
        last = store.seq
        seen[last] = time.time()
    time.sleep(0.0005)
store.close()
print(json.dumps(seen), flush=True)
"""


def measure_store_lag(work: Path, items: int, seed: int = 0) -> dict[str, Any]:
    """Seconds from a commit in this process to its application in another process's copy."""
    import hashlib
    import random

    import numpy as np

    from index import Store, Upload

    data_dir = work / "data-store-lag"
    rng, vecs = random.Random(seed), np.random.default_rng(seed)
    with Store.open(data_dir, 16, "bench-lag", shared=True) as store:
        follower = subprocess.Popen([sys.executable, "-c", _FOLLOWER, str(data_dir)], cwd=ROOT,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert follower.stdin is not None and follower.stdout is not None
        assert follower.stdout.readline().strip() == "ready"
        acked: dict[int, float] = {}
        for i in range(items):
            time.sleep(rng.uniform(0.02, 0.3))  # commits land at any phase of the polling
            data = f"lag item {i}".encode()
            vec = vecs.standard_normal(16).astype(np.float32)
            upload = Upload(data=data, sha256=hashlib.sha256(data).hexdigest(), ext="png",
                            content_type="image/png", embedding=vec / np.linalg.norm(vec))
            store.add_many([upload])
            acked[i + 1] = time.time()  # a fresh data dir: the i-th commit is seq i
        time.sleep(1.0)
        out, _ = follower.communicate("", timeout=120)
    seen = {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}
    # the follower records the seq it reached; a step that applied several commits at once
    # reached the last of them, and the earlier ones were applied at the same moment
    lags = []
    for seq, t in acked.items():
        reached = min((s for s in seen if s >= seq), default=None)
        assert reached is not None, f"seq {seq} never applied"
        lags.append(seen[reached] - t)
    return {"items": items, "follow_interval_s": 0.2, "lag": latency_stats(lags)}


def measure_lag(work: Path, uploads: int, log: Path) -> dict[str, Any]:
    """Lag (s) from an upload's answer on one server to the other's index holding it."""
    import httpx

    data_dir = work / "data-lag"
    with server(data_dir, _env(), log) as (url_a, _), server(data_dir, _env(), log) as (url_b, _):
        clients = [httpx.Client(base_url=u, timeout=60) for u in (url_a, url_b)]
        lags: list[float] = []
        try:
            for i in range(uploads):
                writer, reader = clients[i % 2], clients[1 - i % 2]
                expected = _vectors(writer) + 1
                data = png_bytes(i, size=32, seed=7)
                resp = writer.post("/api/v1/images",
                                   files=[("files", (f"lag{i}.png", data, "image/png"))])
                resp.raise_for_status()
                acked = time.perf_counter()
                while _vectors(reader) < expected:
                    if time.perf_counter() - acked > LAG_TIMEOUT_S:
                        raise TimeoutError(f"upload {i} not seen by the other server")
                    time.sleep(POLL_S)
                lags.append(time.perf_counter() - acked)
        finally:
            for client in clients:
                client.close()
    return {"uploads": uploads, "poll_ms": POLL_S * 1000, "lag": latency_stats(lags),
            "lags_ms": [round(x * 1000, 2) for x in lags]}


@contextmanager
def serve_workers(data_dir: Path, workers: int, log: Path) -> Iterator[str]:
    """`fusion-search serve --workers N` on a free port; yields its base URL once every worker
    answers (each one's first requests wait for nothing)."""
    port = free_port()
    env = {**os.environ, "FUSION_DATA_DIR": str(data_dir), "FUSION_MODEL": MODEL,
           "HF_HUB_OFFLINE": "1", **_env()}
    cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers",
           str(workers), "--log-level", "warning"]
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, timeout=900)
        wait_for_workers(proc, data_dir, workers, timeout=900)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure_throughput(work: Path, items: int, duration: float, log: Path) -> list[dict[str, Any]]:
    """Search requests/s with 1 and 2 workers over the same bulk-loaded collection."""
    from models import load_model, synthetic

    model = load_model(MODEL)
    captions = [synthetic.example("val", i, size=8).caption for i in range(200)]
    data_dir = work / "data-search"
    load_with_tokens(data_dir, items, model, captions)
    del model
    search = search_request(captions[:50], rerank=False)
    rows = []
    for workers in WORKERS:
        with serve_workers(data_dir, workers, log) as base:
            result = asyncio.run(drive(base, search.httpx_request(), CONCURRENCY, duration,
                                       warmup=min(3.0, duration / 2)))
        rows.append({"workers": workers, **result})
    return rows


def run_store_lag(opts: Options) -> dict[str, Any]:
    """The store-level lag alone; prints it and writes ``replicas-store.json``."""
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        result = measure_store_lag(Path(tmp), 40 if opts.quick else 200)
    print_table("store-level catch-up lag after a commit (ms)", [result["lag"]],
                ["p50_ms", "p90_ms", "p99_ms", "mean_ms", "n"])
    write_json(opts, "replicas-store", result)
    return result


def run(opts: Options, items: int | None = None, duration: float | None = None) -> dict[str, Any]:
    """The store-level lag, the servers' lag and throughput; prints them and writes
    ``replicas-store.json`` and ``replicas.json``."""
    run_store_lag(opts)
    uploads = 10 if opts.quick else 60
    items = items or (300 if opts.quick else 5000)
    duration = duration or (4.0 if opts.quick else 20.0)
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        work = Path(tmp)
        log = work / "server.log"  # its tail is printed when a server does not start
        lag = measure_lag(work, uploads, log)
        rows = measure_throughput(work, items, duration, log)
    print_table("catch-up lag after an upload (ms)", [lag["lag"]],
                ["p50_ms", "p90_ms", "p99_ms", "mean_ms", "n"])
    print_table(f"text search, {items} items, {CONCURRENCY} clients", rows,
                ["workers", "rps", "p50_ms", "p99_ms", "errors"])
    one, two = (next(r for r in rows if r["workers"] == n) for n in WORKERS)
    result = {"follow_interval_s": 0.2, "lag": lag, "items": items, "duration_s": duration,
              "concurrency": CONCURRENCY, "search": rows,
              "speedup_2_workers": round(two["rps"] / one["rps"], 3) if one["rps"] else None}
    write_json(opts, "replicas", result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out")
    p.add_argument("--items", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--store-only", action="store_true",
                   help="only the store-level lag (no model, no servers): replicas-store.json")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = "python -m bench.replicas " + " ".join(argv if argv is not None else sys.argv[1:])
    opts = Options(quick=args.quick, out=resolve_out(args.out, args.quick), command=command)
    if args.store_only:
        run_store_lag(opts)
    else:
        run(opts, items=args.items, duration=args.duration)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
