"""What the benchmarks page looks up in the result JSON: one index size, one HTTP scenario at
one concurrency, a p50 at a given recall, and the pairs of rows it compares (FAISS HNSW against
hnswlib, micro-batching on against off, wrk against httpx)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Results = dict[str, dict[str, Any]]


def index_size(d: dict[str, Any] | None, n: int) -> dict[str, Any] | None:
    return next((s for s in (d or {}).get("sizes", []) if s["n"] == n), None)


def at_recall(rows: Sequence[dict[str, Any]], target: float) -> float | None:
    """p50 ms at ``target`` recall, interpolated along a sweep (None when never reached)."""
    pts = sorted((r["recall"], r["p50_ms"]) for r in rows)
    for (r0, t0), (r1, t1) in zip(pts, pts[1:], strict=False):
        if r0 <= target <= r1:
            return t0 if r1 == r0 else t0 + (t1 - t0) * (target - r0) / (r1 - r0)
    if pts and pts[0][0] >= target:
        return pts[0][1]
    return None


def hnsw_pair(s: dict[str, Any], recall: float
              ) -> tuple[dict[str, Any], dict[str, Any], float, float, float] | None:
    """FAISS HNSW and hnswlib of one size, the recall they are compared at (``recall``, or the
    highest both sweeps reach when one falls short of it) and their p50 there."""
    faiss_h = next((c for c in s["configs"] if c["name"].startswith("FAISS HNSW")), None)
    lib = next((c for c in s["configs"] if c["library"] == "hnswlib"), None)
    if faiss_h is None or lib is None:
        return None
    target = min(recall, *(max(r["recall"] for r in c["sweep"]) for c in (faiss_h, lib)))
    t_f, t_l = at_recall(faiss_h["sweep"], target), at_recall(lib["sweep"], target)
    if t_f is None or t_l is None:
        return None
    return faiss_h, lib, target, t_f, t_l


def scenario_row(d: dict[str, Any], scenario: str, c: int) -> dict[str, Any] | None:
    return next((r for r in d["rows"] if r["scenario"] == scenario and r["concurrency"] == c),
                None)


def micro_batching(d: dict[str, Any]) -> list[tuple[int, dict[str, Any], dict[str, Any]]]:
    out = []
    for c in d.get("levels", []):
        on, off = scenario_row(d, "search", c), scenario_row(d, "search, no micro-batching", c)
        if on is not None and off is not None:
            out.append((c, on, off))
    return out


def client_of(r: dict[str, Any]) -> str:
    # rows written before wrk drove the searches carry no client: httpx produced them all
    return str(r.get("client", "httpx"))


def client_comparison(d: dict[str, Any]) -> list[tuple[int, dict[str, Any], dict[str, Any]]]:
    """(clients, wrk row, httpx row) for the search levels both clients drove in one run."""
    out = []
    for c in d.get("levels", []):
        w, h = scenario_row(d, "search", c), scenario_row(d, "search [httpx client]", c)
        if w is not None and h is not None and client_of(w) == "wrk" and client_of(h) == "httpx":
            out.append((c, w, h))
    return out

