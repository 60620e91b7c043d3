"""Which FAISS index fits a collection: pure functions of (count, dim, memory budget).

Memory figures are estimates of the resident size of an ``IndexIDMap2`` around the index; they
only need to be right to within tens of percent to pick a sensible family.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import ByteSize, TypeAdapter

__all__ = [
    "DEFAULT_THRESHOLDS",
    "FactorySpec",
    "Thresholds",
    "choose_factory",
    "describe",
    "estimate_bytes",
    "ivf_nlist",
    "min_training_points",
    "needs_rebuild",
    "parse_bytes",
    "search_params",
]

# IndexIDMap2 keeps an int64 id per vector plus a hash map entry from id to position.
_ID_BYTES = 8 + 40
_HNSW_M = 32
_EF_SEARCH = 64
_NPROBE = 16
# nprobe grows with nlist as nlist / 256 (never below _NPROBE). Measured at 1M clustered
# 512-d vectors with IVF4096,SQ8 (docs/benchmarks.md): nprobe 16 gives recall@10 0.99 at a
# third of the latency of nlist / 64 = 64, which gave no more recall (SQ8's own ceiling).
_NPROBE_DIVISOR = 256
_PQ_CANDIDATES = (256, 192, 128, 96, 64, 48, 32, 24, 16, 12, 8, 4, 2, 1)
_MAX_NLIST = 65536
# FAISS k-means wants about this many training points per centroid.
_POINTS_PER_CENTROID = 39

_BYTE_SIZE = TypeAdapter(ByteSize)


@dataclass(frozen=True)
class Thresholds:
    """Sizes at which the index changes shape; tests shrink them to exercise every path.

    ``flat_max``: below this many vectors an exact search is fast enough.
    ``hnsw_max``: above this HNSW build and memory costs stop paying off.
    ``min_train``: below this many vectors there is too little to train IVF on, so Flat is used
    when HNSW does not fit the budget.
    ``hysteresis``: relative margin a count must be past a threshold before a rebuild.
    ``compact_min`` / ``compact_fraction``: rebuild to drop removed ids once there are more
    than both this many and this fraction of the stored vectors.
    ``exact_filter_max``: a tag filter matching at most this many items is answered by an exact
    scan of their vectors instead of a filtered FAISS search.
    """

    flat_max: int = 50_000
    hnsw_max: int = 4_000_000
    min_train: int = 10_000
    hysteresis: float = 0.1
    compact_min: int = 1_000
    compact_fraction: float = 0.2
    exact_filter_max: int = 4_096


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class FactorySpec:
    """A factory string parsed once: its family and the parameters search needs."""

    text: str
    kind: Literal["flat", "hnsw", "ivf", "other"]
    nlist: int | None = None
    hnsw_m: int | None = None
    pq_m: int | None = None


def parse_bytes(value: str | int) -> int:
    """Parse a size such as ``"2GB"``, ``"512MiB"`` or ``1000000`` into bytes.

    Raises ValueError when the value is not a size or not positive.
    """
    size = int(_BYTE_SIZE.validate_python(value))
    if size <= 0:
        raise ValueError(f"memory budget must be positive, got {value!r}")
    return size


def describe(factory: str) -> FactorySpec:
    """Parse a FAISS factory string into its family and parameters (unknown ones are "other")."""
    parts = [p.strip() for p in factory.split(",")]
    pq_m = None
    for part in parts:
        pq = re.fullmatch(r"(?:PQ|IVFPQ)(\d+)(?:x\d+)?(?:fs|np)?", part)
        if pq:
            pq_m = int(pq.group(1))
    # Only plain IVF/HNSW/Flat layouts: a pre-transform (OPQ, PCA) would need other
    # search parameters, so such strings are "other" and refused by the vector index.
    ivf = re.match(r"IVF(\d+)", parts[0])
    if ivf:
        return FactorySpec(factory, "ivf", nlist=int(ivf.group(1)), pq_m=pq_m)
    hnsw = re.fullmatch(r"HNSW(\d+)", parts[0])
    if hnsw:
        return FactorySpec(factory, "hnsw", hnsw_m=int(hnsw.group(1)), pq_m=pq_m)
    if parts == ["Flat"]:
        return FactorySpec(factory, "flat")
    return FactorySpec(factory, "other", pq_m=pq_m)


def ivf_nlist(count: int) -> int:
    """Number of IVF lists: about 4*sqrt(count) as a power of two, with enough points per list."""
    target = 2 ** round(math.log2(max(4.0 * math.sqrt(max(count, 1)), 1.0)))
    trainable = 2 ** int(math.log2(max(count // _POINTS_PER_CENTROID, 1)))
    return max(1, min(target, trainable, _MAX_NLIST))


def estimate_bytes(factory: str, count: int, dim: int) -> int:
    """Estimated resident bytes of ``count`` vectors of ``dim`` in this index family.

    Raises ValueError for families it cannot estimate.
    """
    spec = describe(factory)
    ids = count * _ID_BYTES
    if spec.kind == "flat":
        return count * dim * 4 + ids
    if spec.kind == "hnsw":
        links = 2 * (spec.hnsw_m or _HNSW_M) * 4 * 1.1 + 16  # level-0 links, upper levels, offsets
        return int(count * (dim * 4 + links)) + ids
    if spec.kind == "ivf" and spec.nlist is not None:
        centroids = spec.nlist * dim * 4
        if spec.pq_m is not None:
            return count * (spec.pq_m + 8) + ids + centroids + 256 * dim * 4
        if factory.endswith("SQ8"):
            return count * (dim + 8) + ids + centroids
    raise ValueError(f"cannot estimate the memory of {factory!r}")


def _pq_m(count: int, dim: int, nlist: int, budget: int) -> int:
    candidates = [m for m in _PQ_CANDIDATES if dim % m == 0 and m <= max(dim // 2, 1)]
    for m in candidates:
        if estimate_bytes(f"IVF{nlist},PQ{m}", count, dim) <= budget:
            return m
    return candidates[-1]  # nothing fits: the smallest code is the best we can do


def choose_factory(
    count: int,
    dim: int,
    memory_budget_bytes: int,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> str:
    """FAISS factory string (without IDMap) for ``count`` vectors of ``dim`` within the budget.

    Flat while exact search is cheap; HNSW while its graph fits the budget; IVF with SQ8, or with
    PQ when memory is tight. Raises ValueError for a negative count or non-positive dim/budget.
    """
    if count < 0 or dim <= 0 or memory_budget_bytes <= 0:
        raise ValueError(f"invalid count={count}, dim={dim}, budget={memory_budget_bytes}")
    if count < thresholds.flat_max and estimate_bytes("Flat", count, dim) <= memory_budget_bytes:
        return "Flat"
    hnsw = f"HNSW{_HNSW_M}"
    if count <= thresholds.hnsw_max and estimate_bytes(hnsw, count, dim) <= memory_budget_bytes:
        return hnsw
    if count < thresholds.min_train:
        return "Flat"  # too few vectors to train IVF on, and few enough to scan
    nlist = ivf_nlist(count)
    if estimate_bytes(f"IVF{nlist},SQ8", count, dim) <= memory_budget_bytes:
        return f"IVF{nlist},SQ8"
    factory = f"IVF{nlist},PQ{_pq_m(count, dim, nlist, memory_budget_bytes)}"
    # PQ's codebooks need 256 training points whatever the thresholds say.
    return factory if count >= min_training_points(factory) else "Flat"


def needs_rebuild(
    current_factory: str,
    count: int,
    dim: int,
    memory_budget_bytes: int,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> bool:
    """True when the collection has moved clearly past a threshold since ``current_factory``.

    The choice must be the same a ``hysteresis`` margin either side of ``count``, so a
    collection hovering around a threshold does not flip between families on every add/delete.
    Raises ValueError like ``choose_factory``.
    """
    target = choose_factory(count, dim, memory_budget_bytes, thresholds)
    if target == current_factory:
        return False
    low = int(count * (1.0 - thresholds.hysteresis))
    high = math.ceil(count * (1.0 + thresholds.hysteresis))
    return (
        choose_factory(low, dim, memory_budget_bytes, thresholds) == target
        and choose_factory(high, dim, memory_budget_bytes, thresholds) == target
    )


def search_params(factory: str) -> dict[str, int]:
    """Default search-time parameters: ``efSearch`` for HNSW, ``nprobe`` for IVF, none for Flat."""
    spec = describe(factory)
    if spec.kind == "hnsw":
        return {"efSearch": _EF_SEARCH}
    if spec.kind == "ivf" and spec.nlist is not None:
        return {"nprobe": min(spec.nlist, max(_NPROBE, spec.nlist // _NPROBE_DIVISOR))}
    return {}


def min_training_points(factory: str) -> int:
    """Fewest vectors FAISS can train this factory on (0 when it needs no training)."""
    spec = describe(factory)
    needed = 0
    if spec.nlist is not None:
        needed = spec.nlist
    if spec.pq_m is not None:
        needed = max(needed, 256)
    return needed
