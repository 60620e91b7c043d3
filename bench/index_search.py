"""Vector search: Flat, HNSW and IVF (Flat, SQ8, PQ) on clustered 512-d vectors.

For each collection size: build seconds, bytes per vector (the serialised index), single-query
p50/p99, batch queries/s and recall@10 against exact search, over an efSearch / nprobe sweep;
our ``index.vectors.VectorIndex`` against the raw FAISS index it wraps (same structure, same
parameters, alternated query by query); FAISS HNSW against hnswlib at equal recall; and whether
``index.choice`` (``choose_factory`` + ``search_params``, 2 GiB budget as in the settings) picks
a setting on the measured frontier.

The data is a Gaussian mixture shaped like embeddings: unit-norm cluster centres, each cluster
spread along its own random low-rank subspace plus isotropic noise, then L2-normalised.
Queries come from the same mixture (other draws).
"""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from index.choice import choose_factory, ivf_nlist, parse_bytes, search_params
from index.vectors import VectorIndex

from .common import Options, latency_stats, plt_module, print_table, save_figure, write_json

DIM = 512
K = 10
BUDGET = parse_bytes("2GiB")  # the service's default memory_budget
FULL_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000,)
EF_SWEEP = (16, 32, 64, 128, 256, 512)
NPROBE_SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 256)
HNSW_M = 32
EF_CONSTRUCTION = 40  # FAISS's default, which VectorIndex.create uses
TRAIN_MAX = 100_000  # the store trains IVF on at most this many vectors
PQ_M = 64
GOAL_P50_MS = 1.0
GOAL_RECALL = 0.95
# HNSW builds slower than linearly; past this estimated build time a size gets HNSW on a prefix
HNSW_BUILD_LIMIT_S = 900.0
HNSW_FALLBACK_N = 300_000

# data model
CLUSTERS = 1000
LOCAL_RANK = 32
LOCAL_SCALE = 0.6
NOISE_SCALE = 0.2


# ---- data ---------------------------------------------------------------------------------------

class Mixture:
    """The fixed mixture (centres and subspaces) that base vectors and queries are drawn from."""

    def __init__(self, dim: int = DIM, clusters: int = CLUSTERS, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        self._basis_seed = seed + 1

    def _basis(self, c: int) -> np.ndarray:
        rng = np.random.default_rng([self._basis_seed, c])
        return rng.standard_normal((LOCAL_RANK, self.dim), dtype=np.float32) / math.sqrt(self.dim)

    def sample(self, n: int, seed: int) -> np.ndarray:
        """``n`` unit vectors, cluster by cluster (each cluster's rows then shuffled)."""
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, len(self.centres), n)
        out = np.empty((n, self.dim), np.float32)
        for c in tqdm(range(len(self.centres)), desc=f"data {n:,}", leave=False,
                      disable=n < 200_000):
            rows = np.flatnonzero(labels == c)
            if rows.size == 0:
                continue
            z = rng.standard_normal((rows.size, LOCAL_RANK), dtype=np.float32)
            x = self.centres[c] + (LOCAL_SCALE / math.sqrt(LOCAL_RANK)) * (z @ self._basis(c))
            x += (NOISE_SCALE / math.sqrt(self.dim)) * rng.standard_normal(
                (rows.size, self.dim), dtype=np.float32)
            out[rows] = x
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


def exact_top(base: np.ndarray, queries: np.ndarray, k: int = K) -> tuple[np.ndarray, float]:
    """Exact top-k ids by inner product, and the batch queries/s of that Flat search."""
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    t0 = time.perf_counter()
    _, ids = flat.search(queries, k)
    return ids, len(queries) / (time.perf_counter() - t0)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = sum(len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth,
                                                                          strict=True))
    return hits / truth.size


# ---- measuring one searcher ---------------------------------------------------------------------

Searcher = Callable[[np.ndarray], np.ndarray]
"""Takes an (n, d) query matrix, returns (n, K) ids."""


def single_latencies(search: Callable[[np.ndarray], object], queries: np.ndarray
                     ) -> list[float]:
    out = []
    search(queries[:1])
    for i in range(len(queries)):
        q = queries[i : i + 1]
        t0 = time.perf_counter()
        search(q)
        out.append(time.perf_counter() - t0)
    return out


def measure(search: Searcher, queries: np.ndarray, truth: np.ndarray, n_single: int
            ) -> dict[str, Any]:
    """recall@10 and batch queries/s over all queries; single-query latency over the first."""
    t0 = time.perf_counter()
    found = search(queries)
    qps = len(queries) / (time.perf_counter() - t0)
    lat = latency_stats(single_latencies(search, queries[:n_single]))
    return {"recall": round(recall_at(found, truth), 4), "qps": round(qps, 1),
            "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"]}


def faiss_searcher(index: Any, params: Any) -> Searcher:
    def search(q: np.ndarray) -> np.ndarray:
        return index.search(q, K, params=params)[1]  # type: ignore[no-any-return]

    return search


def wrapper_searcher(vi: VectorIndex) -> Searcher:
    def search(q: np.ndarray) -> np.ndarray:
        hits = vi.search(q, K)
        out = np.full((len(hits), K), -1, np.int64)
        for row, h in enumerate(hits):
            out[row, : len(h)] = [i for i, _ in h]
        return out

    return search


def index_bytes(index: Any) -> int:
    return int(faiss.serialize_index(index).size)


def hnsw_params(ef: int) -> Any:
    p = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
    p.efSearch = ef
    return p


def ivf_params(nprobe: int) -> Any:
    p = faiss.SearchParametersIVF()
    p.nprobe = nprobe
    return p


def params_for(kind: str, value: int | None) -> Any:
    if kind == "hnsw" and value is not None:
        return hnsw_params(value)
    if kind == "ivf" and value is not None:
        return ivf_params(value)
    return None


# ---- wrapper overhead ---------------------------------------------------------------------------

def overhead(vi: VectorIndex, inner: Any, kind: str, queries: np.ndarray, n_single: int
             ) -> dict[str, Any]:
    """VectorIndex.search against the wrapped FAISS index at the service's default parameters,
    single queries alternated one by one, then the batch."""
    default = search_params(vi.factory)
    value = default.get("efSearch", default.get("nprobe"))
    raw = faiss_searcher(inner, params_for(kind, value))

    def ours(q: np.ndarray) -> object:  # the hit lists as the service receives them
        return vi.search(q, K)

    raw(queries[:1])
    ours(queries[:1])
    t_raw, t_ours = [], []
    for i in range(n_single):
        q = queries[i : i + 1]
        t_raw += single_latencies(raw, q)[-1:]
        t_ours += single_latencies(ours, q)[-1:]
    batch = {}
    for name, fn in (("raw", raw), ("ours", ours)):
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            fn(queries)
            best = min(best, time.perf_counter() - t0)
        batch[name] = len(queries) / best
    r, o = latency_stats(t_raw), latency_stats(t_ours)
    return {"params": default, "raw_p50_ms": r["p50_ms"], "ours_p50_ms": o["p50_ms"],
            "raw_p99_ms": r["p99_ms"], "ours_p99_ms": o["p99_ms"],
            "p50_overhead": o["p50_ms"] / r["p50_ms"] - 1.0,
            "raw_qps": batch["raw"], "ours_qps": batch["ours"],
            "qps_overhead": batch["raw"] / batch["ours"] - 1.0}


# ---- under CPU contention ------------------------------------------------------------------------

@contextmanager
def cpu_hogs(n: int) -> Iterator[None]:
    """``n`` busy-looping processes, standing in for the server's other requests encoding."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def contention(built: Built, kind: str, queries: np.ndarray, n_single: int
               ) -> list[dict[str, Any]]:
    """Single-query latency of the raw index, of FAISS's IndexIDMap2 around it (what
    VectorIndex called before it searched single queries without an OpenMP team) and of
    VectorIndex, on an idle machine and with every core kept busy by other processes."""
    vi = built.vi
    default = search_params(vi.factory)
    params = params_for(kind, default.get("efSearch", default.get("nprobe")))
    searchers = {"raw FAISS index": faiss_searcher(built.inner, params),
                 "IndexIDMap2 (VectorIndex before)": faiss_searcher(built.idmap, params),
                 "VectorIndex": wrapper_searcher(vi)}
    rows = []
    for load in ("idle", "busy"):
        hogs = os.cpu_count() or 2
        with cpu_hogs(hogs if load == "busy" else 0):
            for name, fn in searchers.items():
                lat = latency_stats(single_latencies(fn, queries[:n_single]))
                rows.append({"factory": vi.factory, "machine": load, "searcher": name,
                             "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"]})
    return rows


# ---- building -----------------------------------------------------------------------------------

@dataclass
class Built:
    """A VectorIndex, the IndexIDMap2 it holds and the FAISS index inside that."""

    vi: VectorIndex
    idmap: Any
    inner: Any
    seconds: float


def build_wrapped(factory: str, base: np.ndarray, train: np.ndarray,
                  quantizer_from: Any = None) -> Built:
    """A VectorIndex around a FAISS index we keep a handle on, filled with ids 0..n-1.

    ``quantizer_from``: an IVF index whose trained coarse centroids are reused, so IVF variants
    of one size share one k-means (its time is added to their build time by the caller).
    """
    inner = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    if "HNSW" in factory:
        faiss.downcast_index(inner).hnsw.efConstruction = EF_CONSTRUCTION  # type: ignore[attr-defined]
    if quantizer_from is not None:
        centroids = faiss.extract_index_ivf(quantizer_from).quantizer.reconstruct_n(
            0, faiss.extract_index_ivf(quantizer_from).nlist)
        faiss.extract_index_ivf(inner).quantizer.add(centroids)
    idmap = faiss.IndexIDMap2(inner)
    vi = VectorIndex(idmap, factory, DIM)
    t0 = time.perf_counter()
    if not vi.is_trained:
        vi.train(train)
    for s in range(0, len(base), 100_000):
        vi.add(np.arange(s, min(s + 100_000, len(base)), dtype=np.int64), base[s : s + 100_000])
    return Built(vi, idmap, inner, time.perf_counter() - t0)


def sweep(inner: Any, kind: str, values: Sequence[int | None], queries: np.ndarray,
          truth: np.ndarray, n_single: int) -> list[dict[str, Any]]:
    rows = []
    for v in values:
        row = measure(faiss_searcher(inner, params_for(kind, v)), queries, truth, n_single)
        rows.append({"param": v, **row})
    return rows


def bench_hnswlib(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, n_single: int,
                  threads: int) -> dict[str, Any] | None:
    try:
        import hnswlib
    except ImportError:
        print("hnswlib is not installed: skipping the hnswlib comparison "
              "(pip install -e '.[bench]' to include it)")
        return None
    index = hnswlib.Index(space="ip", dim=DIM)
    index.init_index(max_elements=len(base), M=HNSW_M, ef_construction=EF_CONSTRUCTION,
                     random_seed=0)
    t0 = time.perf_counter()
    index.add_items(base, np.arange(len(base)), num_threads=threads)
    build_s = time.perf_counter() - t0
    rows = []
    for ef in EF_SWEEP:
        index.set_ef(max(ef, K))

        def search(q: np.ndarray) -> np.ndarray:
            return index.knn_query(q, k=K, num_threads=1 if len(q) == 1 else threads)[0]

        rows.append({"param": ef, **measure(search, queries, truth, n_single)})
    return {"name": "hnswlib HNSW32", "kind": "hnsw", "library": "hnswlib", "build_s": build_s,
            "bytes_per_vector": index.index_file_size() / len(base)
            if hasattr(index, "index_file_size") else None, "sweep": rows}


# ---- one collection size ------------------------------------------------------------------------

def bench_size(n: int, mix: Mixture, opts: Options, hnsw_n: int, with_contention: bool
               ) -> dict[str, Any]:
    n_queries = 200 if opts.quick else 1000
    n_single = 100 if opts.quick else 300
    threads = faiss.omp_get_max_threads()
    base = mix.sample(n, seed=n)
    queries = mix.sample(n_queries, seed=1)
    truth, flat_qps = exact_top(base, queries)
    rng = np.random.default_rng(0)
    train = base[rng.choice(n, min(n, TRAIN_MAX), replace=False)] if n > TRAIN_MAX else base
    nlist = ivf_nlist(n)
    configs: list[dict[str, Any]] = []
    overheads: dict[str, Any] = {}
    busy: list[dict[str, Any]] = []

    def record(name: str, kind: str, built: Built, values: Sequence[int | None], n_here: int,
               tru: np.ndarray, extra_s: float = 0.0) -> None:
        vi, inner, factory = built.vi, built.inner, built.vi.factory
        rows = sweep(inner, kind, values, queries, tru, n_single // (3 if kind == "flat" else 1)
                     ) if values != [None] else [
            {"param": None, **measure(faiss_searcher(inner, None), queries, tru,
                                      min(n_single, 100))}]
        configs.append({"name": name, "factory": factory, "kind": kind, "library": "faiss",
                        "n": n_here, "nlist": nlist if kind == "ivf" else None,
                        "build_s": built.seconds + extra_s,
                        "bytes_per_vector": index_bytes(inner) / n_here,
                        "sweep": rows})
        if n_here == n:
            overheads[factory] = overhead(vi, inner, kind, queries,
                                          min(n_single, 100) if kind == "flat" else n_single)
        if with_contention and kind == "hnsw":
            busy.extend(contention(built, kind, queries, min(n_single, 200)))

    # Flat
    record("Flat (exact)", "flat", build_wrapped("Flat", base, base), [None], n, truth)
    # HNSW, on a prefix when the full size would take too long to build
    hb, ht = (base, truth) if hnsw_n >= n else (base[:hnsw_n], exact_top(base[:hnsw_n],
                                                                        queries)[0])
    record(f"FAISS HNSW{HNSW_M}", "hnsw", build_wrapped(f"HNSW{HNSW_M}", hb, hb),
           list(EF_SWEEP), len(hb), ht)
    gc.collect()
    lib = bench_hnswlib(hb, queries, ht, n_single, threads)
    if lib is not None:
        configs.append({**lib, "n": len(hb)})
    # IVF family sharing one coarse quantizer
    probes = [p for p in NPROBE_SWEEP if p <= nlist]
    ivf = build_wrapped(f"IVF{nlist},Flat", base, train)
    record(f"IVF{nlist},Flat", "ivf", ivf, probes, n, truth)
    # PQ's 64 small k-means take minutes when the cores are shared; the quick run skips it
    for code in ("SQ8",) if opts.quick else ("SQ8", f"PQ{PQ_M}"):
        factory = f"IVF{nlist},{code}"
        record(factory, "ivf", build_wrapped(factory, base, train, quantizer_from=ivf.inner),
               probes, n, truth, extra_s=ivf.seconds)
    del ivf
    gc.collect()
    return {"n": n, "dim": DIM, "queries": n_queries, "single_queries": n_single,
            "nlist": nlist, "train_points": len(train), "hnsw_n": len(hb),
            "flat_batch_qps": flat_qps, "configs": configs, "overhead": overheads,
            "contention": busy,
            "choice": check_choice(n, configs)}


def check_choice(n: int, configs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Where index.choice's pick lands among the measured settings of this size."""
    factory = choose_factory(n, DIM, BUDGET)
    params = search_params(factory)
    value = params.get("efSearch", params.get("nprobe"))
    points = [{"name": c["name"], "factory": c.get("factory"), "param": r["param"],
               "recall": r["recall"], "p50_ms": r["p50_ms"], "n": c["n"],
               "library": c["library"]}
              for c in configs for r in c["sweep"]]
    faiss_pts = [p for p in points if p["library"] == "faiss" and p["n"] == n]
    chosen = next((p for p in faiss_pts if p["factory"] == factory and p["param"] == value),
                  None)
    meeting = [p for p in faiss_pts if p["recall"] >= GOAL_RECALL and p["p50_ms"] <= GOAL_P50_MS]
    best = min(meeting, key=lambda p: p["p50_ms"]) if meeting else None
    dominated_by = [p for p in faiss_pts if chosen is not None and p["recall"] > chosen["recall"]
                    and p["p50_ms"] < chosen["p50_ms"] * 0.9]
    return {"factory": factory, "params": params, "chosen": chosen,
            "chosen_meets_goal": bool(chosen and chosen["recall"] >= GOAL_RECALL
                                      and chosen["p50_ms"] <= GOAL_P50_MS),
            "best_meeting_goal": best, "dominated_by": dominated_by}


# ---- entry --------------------------------------------------------------------------------------

def run(opts: Options, sizes: Sequence[int] | None = None) -> dict[str, Any]:
    sizes = list(sizes or (QUICK_SIZES if opts.quick else FULL_SIZES))
    mix = Mixture()
    results = []
    per_vector_s: float | None = None
    for n in tqdm(sizes, desc="index sizes"):
        hnsw_n = n
        if per_vector_s is not None and per_vector_s * n * math.log10(n) > HNSW_BUILD_LIMIT_S:
            hnsw_n = HNSW_FALLBACK_N
            print(f"HNSW for {n:,} vectors would build in about "
                  f"{per_vector_s * n * math.log10(n) / 60:.0f} min here: measuring it on "
                  f"{hnsw_n:,} of them")
        res = bench_size(n, mix, opts, hnsw_n, with_contention=not opts.quick and n == sizes[0])
        hnsw = next(c for c in res["configs"] if c["name"].startswith("FAISS HNSW"))
        per_vector_s = hnsw["build_s"] / (hnsw["n"] * math.log10(hnsw["n"]))
        results.append(res)
        report(res)
        gc.collect()
    data = {"sizes": results, "k": K, "goal": {"p50_ms": GOAL_P50_MS, "recall": GOAL_RECALL},
            "data_model": {"clusters": CLUSTERS, "local_rank": LOCAL_RANK,
                           "local_scale": LOCAL_SCALE, "noise_scale": NOISE_SCALE},
            "hnsw": {"M": HNSW_M, "efConstruction": EF_CONSTRUCTION},
            "threads": faiss.omp_get_max_threads()}
    write_json(opts, "index", data)
    plot(opts, results)
    return data


def report(res: dict[str, Any]) -> None:
    rows = [{"index": c["name"], "n": c["n"], "param": r["param"], "build_s": c["build_s"],
             "bytes/vec": c["bytes_per_vector"], "recall@10": r["recall"], "p50_ms": r["p50_ms"],
             "p99_ms": r["p99_ms"], "qps": r["qps"]}
            for c in res["configs"] for r in c["sweep"]]
    print_table(f"index: {res['n']:,} x {res['dim']} (recall@10 vs exact)", rows,
                ["index", "n", "param", "build_s", "bytes/vec", "recall@10", "p50_ms", "p99_ms",
                 "qps"])
    print_table("VectorIndex wrapper vs raw FAISS (default search params)",
                [{"factory": f, **o} for f, o in res["overhead"].items()],
                ["factory", "params", "raw_p50_ms", "ours_p50_ms", "p50_overhead", "raw_qps",
                 "ours_qps", "qps_overhead"])
    if res["contention"]:
        print_table("single queries on an idle and on a busy machine", res["contention"],
                    ["factory", "machine", "searcher", "p50_ms", "p99_ms"])
    ch = res["choice"]
    print(f"choice: {ch['factory']} {ch['params']} -> {ch['chosen']}; meets goal: "
          f"{ch['chosen_meets_goal']}; fastest meeting it: {ch['best_meeting_goal']}")


def plot(opts: Options, results: Sequence[dict[str, Any]]) -> None:
    plt = plt_module()
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        for c in res["configs"]:
            pts = [(r["p50_ms"], r["recall"]) for r in c["sweep"]]
            label = c["name"] + (f" (n={c['n']:,})" if c["n"] != res["n"] else "")
            style = "*" if c["kind"] == "flat" else ("--o" if c["library"] == "hnswlib" else "-o")
            ax.plot(*zip(*pts, strict=True), style, label=label, markersize=4)
        ch = res["choice"]["chosen"]
        if ch is not None:
            ax.plot(ch["p50_ms"], ch["recall"], "kx", markersize=12, mew=2,
                    label=f"index.choice: {res['choice']['factory']} {res['choice']['params']}")
        ax.axvspan(1e-3, GOAL_P50_MS, ymin=0, ymax=1, color="green", alpha=0.05)
        ax.axhline(GOAL_RECALL, color="green", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("single-query p50 (ms, log)")
        ax.set_ylabel("recall@10")
        ax.set_xlim(left=min(r["p50_ms"] for c in res["configs"] for r in c["sweep"]) * 0.7)
        ax.set_title(f"{res['n']:,} x {res['dim']}")
        ax.legend(fontsize=6, loc="lower right")
    save_figure(opts, fig, "index")
