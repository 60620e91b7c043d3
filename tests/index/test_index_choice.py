"""Index choice is a pure function of (count, dim, budget); these pin its decisions."""

from __future__ import annotations

import math

import pytest

from index.choice import (
    Thresholds,
    choose_factory,
    describe,
    estimate_bytes,
    ivf_nlist,
    min_training_points,
    needs_rebuild,
    parse_bytes,
    search_params,
)

GB = 1_000_000_000
MB = 1_000_000


@pytest.mark.parametrize(
    ("count", "dim", "budget", "family"),
    [
        (0, 512, 2 * GB, "Flat"),
        (1_000, 512, 2 * GB, "Flat"),
        (49_999, 512, 2 * GB, "Flat"),
        (49_999, 64, 2 * GB, "Flat"),
        (60_000, 512, 2 * GB, "HNSW"),
        (500_000, 512, 2 * GB, "HNSW"),
        (2_000_000, 128, 2 * GB, "HNSW"),
        (1_000_000, 512, 2 * GB, "SQ8"),  # HNSW would need ~2.4 GB
        (10_000_000, 128, 2 * GB, "SQ8"),  # past hnsw_max even though it would fit
        (200_000, 512, 100 * MB, "PQ"),  # tight budget
        (5_000_000, 768, 1 * GB, "PQ"),
        (30_000, 512, 15 * MB, "PQ"),  # small collection, tiny budget
        (5_000, 512, 1 * MB, "Flat"),  # too few vectors to train IVF on: Flat regardless
    ],
)
def test_choose_factory_grid(count: int, dim: int, budget: int, family: str) -> None:
    factory = choose_factory(count, dim, budget)
    spec = describe(factory)
    if family == "Flat":
        assert factory == "Flat"
    elif family == "HNSW":
        assert factory == "HNSW32"
        assert estimate_bytes(factory, count, dim) <= budget
    else:
        assert spec.kind == "ivf" and spec.nlist is not None
        assert factory.endswith(family if family == "SQ8" else f"PQ{spec.pq_m}")
        assert spec.nlist & (spec.nlist - 1) == 0, "nlist is a power of two"
        assert count >= 39 * spec.nlist, "enough training points per list"
    if spec.pq_m is not None:
        assert dim % spec.pq_m == 0
        assert estimate_bytes(factory, count, dim) <= budget


def test_pq_code_shrinks_with_the_budget() -> None:
    specs = [describe(choose_factory(2_000_000, 512, b * MB)) for b in (800, 300, 150)]
    sizes = [s.pq_m or 0 for s in specs]
    assert all(sizes)
    assert sizes == sorted(sizes, reverse=True) and sizes[0] != sizes[-1]


@pytest.mark.parametrize("count", [10_000, 100_000, 1_000_000, 50_000_000])
def test_nlist_is_about_four_sqrt_count(count: int) -> None:
    nlist = ivf_nlist(count)
    assert nlist & (nlist - 1) == 0
    assert 4 * math.sqrt(count) / 2 <= nlist <= min(4 * math.sqrt(count) * 2, 65536)


def test_thresholds_are_parameters() -> None:
    small = Thresholds(flat_max=100, min_train=50)
    assert choose_factory(99, 16, GB, small) == "Flat"
    assert choose_factory(100, 16, GB, small) == "HNSW32"


@pytest.mark.parametrize("bad", [(-1, 16, GB), (10, 0, GB), (10, 16, 0)])
def test_choose_factory_rejects_nonsense(bad: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        choose_factory(*bad)


@pytest.mark.parametrize(
    ("factory", "params"),
    [
        ("Flat", {}),
        ("HNSW32", {"efSearch": 64}),
        ("HNSW32,Flat", {"efSearch": 64}),
        ("IVF1024,SQ8", {"nprobe": 16}),
        ("IVF65536,PQ64", {"nprobe": 256}),
        ("IVF4096,SQ8", {"nprobe": 16}),
        ("IVF16384,SQ8", {"nprobe": 64}),
        ("IVF8,PQ4", {"nprobe": 8}),
    ],
)
def test_search_params(factory: str, params: dict[str, int]) -> None:
    assert search_params(factory) == params


def test_min_training_points() -> None:
    assert min_training_points("Flat") == 0
    assert min_training_points("HNSW32") == 0
    assert min_training_points("IVF1024,SQ8") == 1024
    assert min_training_points("IVF16,PQ8") == 256


def test_needs_rebuild_has_hysteresis() -> None:
    t = Thresholds(flat_max=1_000, min_train=100_000, hysteresis=0.1)
    assert not needs_rebuild("Flat", 999, 16, GB, t)
    assert not needs_rebuild("Flat", 1_050, 16, GB, t), "just past the threshold: wait"
    assert needs_rebuild("Flat", 1_200, 16, GB, t)
    assert not needs_rebuild("HNSW32", 1_200, 16, GB, t)
    assert not needs_rebuild("HNSW32", 960, 16, GB, t), "just below after deletes: keep"
    assert needs_rebuild("HNSW32", 700, 16, GB, t)
    assert needs_rebuild("IVF1024,PQ8", 10, 16, GB, t), "a configured type that no longer fits"


@pytest.mark.parametrize(
    ("text", "size"),
    [("2GB", 2 * GB), ("512MiB", 512 * 2**20), ("1 kb", 1000), (4096, 4096)],
)
def test_parse_bytes(text: str | int, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("bad", ["lots", "-1GB", "0", ""])
def test_parse_bytes_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_bytes(bad)


@pytest.mark.parametrize(("factory", "count", "dim"), [
    ("Flat", 4_000, 64),
    ("HNSW32", 4_000, 64),
    ("IVF64,SQ8", 10_000, 64),
    # PQ is left out: training its codebooks takes a minute on these shared cores
])
def test_estimate_covers_a_real_index_of_that_family(factory: str, count: int, dim: int) -> None:
    """The budget checks above trust estimate_bytes; here it is held against real FAISS indexes
    (IDMap2 over the factory, trained and filled), measured by their serialised size: never
    under it (a chosen index fits its budget), at most twice it (the budget is not wasted)."""
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(1)  # OpenMP workers spin on busy shared cores
    vectors = np.random.default_rng(0).standard_normal((count, dim)).astype(np.float32)
    index = faiss.IndexIDMap2(faiss.index_factory(dim, factory))
    if not index.is_trained:
        index.train(vectors)
    index.add_with_ids(vectors, np.arange(count, dtype=np.int64))
    real = len(faiss.serialize_index(index))
    estimate = estimate_bytes(factory, count, dim)
    assert real <= estimate <= 2 * real, (factory, real, estimate)
