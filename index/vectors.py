"""The FAISS side: an ``IndexIDMap2`` keyed by catalog row id, and its on-disk snapshot.

Only a Flat index removes vectors for real. HNSW cannot remove at all, and IVF behind an IDMap
renumbers wrongly after a removal, so for those a removed id becomes a tombstone that searches
filter out until the next rebuild drops it.

Snapshot file layout: ``MAGIC``, a little-endian uint32 header length, a JSON header (dim,
factory, count, max_id, model, the change-log seq it holds (absent in older files), payload length
and CRC-32), then the ``faiss.serialize_index``
payload. Any file that fails a check loads as None and the caller rebuilds from the catalog.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from index.atomic import write_atomic
from index.choice import describe, search_params
from index.errors import DimensionMismatch
from index.locks import RWLock

__all__ = ["Hits", "VectorIndex", "as_matrix"]

log = logging.getLogger(__name__)

MAGIC = b"FSVIDX1\n"
_HEADER_LEN = struct.Struct("<I")
_FORMAT = 1

Hits = list[tuple[int, float]]
"""One query's results: (row id, inner-product score), best first."""


def as_matrix(vectors: npt.ArrayLike, dim: int) -> npt.NDArray[np.float32]:
    """Vectors as a C-contiguous (n, dim) float32 matrix; a single (dim,) vector becomes (1, dim).

    Raises DimensionMismatch for another width, ValueError for another rank or non-finite values.
    """
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.ndim != 2:
        raise ValueError(f"expected a (n, {dim}) matrix, got shape {matrix.shape}")
    if matrix.shape[1] != dim:
        raise DimensionMismatch(
            matrix.shape[1],
            dim,
            message=f"vectors have dimension {matrix.shape[1]}, the index expects {dim}",
        )
    if not np.isfinite(matrix).all():
        raise ValueError("vectors contain NaN or infinity")
    return matrix


class VectorIndex:
    """A FAISS index of inner-product vectors keyed by int64 ids; thread-safe.

    Searches share a readers-writer lock; add, remove and train take it exclusively.
    """

    def __init__(self, index: Any, factory: str, dim: int) -> None:
        self._index = index
        self.factory = factory
        self.dim = dim
        self._spec = describe(factory)
        self._params = search_params(factory)
        self._removable = self._spec.kind == "flat"
        self._tombstones: set[int] = set()
        self._lock = RWLock()
        # the catalog change-log seq a loaded snapshot held (None: unknown, an older snapshot)
        self.seq: int | None = None
        ids = self._stored_ids()
        self._max_id = int(ids.max()) if ids.size else 0

    @classmethod
    def create(cls, dim: int, factory: str) -> VectorIndex:
        """An empty index (untrained when the factory needs training).

        Raises ValueError for a factory this package cannot serve (not Flat, HNSW or IVF, or
        already containing IDMap) or that FAISS cannot build at this dimension.
        """
        spec = describe(factory)
        if spec.kind == "other" or "IDMap" in factory:
            raise ValueError(
                f"unsupported index type {factory!r}: use 'auto' or a Flat, HNSW or IVF factory "
                "string without IDMap (e.g. 'HNSW32', 'IVF1024,SQ8', 'IVF1024,PQ32')"
            )
        try:
            inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ValueError(f"FAISS cannot build {factory!r} for dimension {dim}: {exc}") from exc
        return cls(faiss.IndexIDMap2(inner), factory, dim)

    # -- properties --------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        """Number of live (searchable) vectors."""
        return int(self._index.ntotal) - len(self._tombstones)

    @property
    def max_id(self) -> int:
        """Highest id ever added to this index (0 when none)."""
        return self._max_id

    @property
    def tombstones(self) -> int:
        """Removed ids still occupying space until a rebuild."""
        return len(self._tombstones)

    @property
    def is_trained(self) -> bool:
        """False for an IVF index that still needs ``train``."""
        return bool(self._index.is_trained)

    def ids(self) -> npt.NDArray[np.int64]:
        """Every live id, ascending."""
        with self._lock.read():
            ids = self._stored_ids()
            dead = np.fromiter(self._tombstones, dtype=np.int64, count=len(self._tombstones))
        return np.sort(np.setdiff1d(ids, dead, assume_unique=True))

    def absent(self, ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Those of ``ids`` never added to this index (a removed id counts as added)."""
        keys = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if keys.size == 0:
            return keys
        with self._lock.read():
            stored = self._stored_ids()
        # ids in the keys' range first: one linear pass, then a small set test (the keys are
        # usually the newest ids of a large index)
        near = stored[(stored >= keys.min()) & (stored <= keys.max())]
        return keys[~np.isin(keys, near)]

    def _stored_ids(self) -> npt.NDArray[np.int64]:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    # -- writes ------------------------------------------------------------------------------

    def train(self, vectors: npt.ArrayLike) -> None:
        """Train an IVF index on a sample of the collection.

        Raises DimensionMismatch/ValueError for bad vectors, RuntimeError when FAISS rejects
        the sample (e.g. fewer points than lists).
        """
        matrix = as_matrix(vectors, self.dim)
        with self._lock.write():
            self._index.train(matrix)

    def add(self, ids: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Add vectors under new ids (ids must not be in the index already).

        Raises DimensionMismatch/ValueError for bad shapes, RuntimeError when the index is not
        trained.
        """
        matrix = as_matrix(vectors, self.dim)
        keys = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if keys.shape[0] != matrix.shape[0]:
            raise ValueError(f"{keys.shape[0]} ids for {matrix.shape[0]} vectors")
        if keys.size == 0:
            return
        with self._lock.write():
            self._index.add_with_ids(matrix, keys)
            self._max_id = max(self._max_id, int(keys.max()))

    def remove(self, ids: Iterable[int]) -> int:
        """Make ids unsearchable; returns how many were live. Unknown ids are ignored."""
        keys = np.fromiter((int(i) for i in ids), dtype=np.int64)
        if keys.size == 0:
            return 0
        with self._lock.write():
            if self._removable:
                return int(self._index.remove_ids(keys))
            present = keys[np.isin(keys, self._stored_ids())]
            fresh = set(present.tolist()) - self._tombstones
            self._tombstones |= fresh
            return len(fresh)

    # -- search ------------------------------------------------------------------------------

    def search(
        self,
        queries: npt.ArrayLike,
        k: int,
        *,
        allow: Collection[int] | None = None,
        block: Collection[int] = (),
    ) -> list[Hits]:
        """Top-k ids by inner product for each query row, best first.

        ``allow`` restricts results to those ids; ``block`` and removed ids never appear. An
        approximate index widens its search (efSearch/nprobe) until k allowed hits are found or
        it has looked everywhere. Raises DimensionMismatch/ValueError for bad queries or k < 1.
        """
        if k < 1:
            raise ValueError("k must be at least 1")
        matrix = as_matrix(queries, self.dim)
        with self._lock.read():
            excluded = self._tombstones.union(block)
            stored = int(self._index.ntotal)
            reachable = stored - len(self._tombstones)
            if allow is not None:
                reachable = min(reachable, len(allow))
            if reachable <= 0 or matrix.shape[0] == 0:
                return [[] for _ in range(matrix.shape[0])]
            want = min(k, reachable)
            kk = min(k, stored)
            selector = _Selector(allow, excluded)
            effort = max(1.0, stored / reachable) if allow is not None else 1.0
            while True:
                params, exhaustive = self._search_params(selector.sel, effort, kk, stored)
                with _one_thread_for(matrix.shape[0]):
                    scores, labels = self._index.search(matrix, kk, params=params)
                hits = [  # tolist(): Python numbers at once, not one numpy scalar at a time
                    [(i, s) for s, i in zip(row_s, row_i, strict=True) if i != -1]
                    for row_s, row_i in zip(scores.tolist(), labels.tolist(), strict=True)
                ]
                if exhaustive or all(len(h) >= want for h in hits):
                    return hits
                effort *= 4

    def _search_params(self, sel: Any, effort: float, k: int, stored: int) -> tuple[Any, bool]:
        """FAISS search parameters for this effort level, and whether they search everything."""
        kind = self._spec.kind
        params: Any
        if kind == "hnsw":
            ef = min(max(int(self._params["efSearch"] * effort), k), max(stored, k))
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing in stubs
            params.efSearch = ef
            exhaustive = ef >= stored
        elif kind == "ivf":
            nlist = self._spec.nlist or 1
            params = faiss.SearchParametersIVF()
            params.nprobe = min(int(self._params["nprobe"] * effort), nlist)
            exhaustive = params.nprobe >= nlist
        elif sel is not None:
            params, exhaustive = faiss.SearchParameters(), True
        else:
            return None, True
        if sel is not None:
            params.sel = sel
        return params, exhaustive

    # -- snapshot ----------------------------------------------------------------------------

    def save(self, path: Path, model: str = "", seq: int | None = None) -> None:
        """Write an atomic, checksummed snapshot to ``path`` (removed ids included; the loader
        drops them again by comparing with the catalog); ``seq``: the catalog change-log seq
        this index holds every change up to.

        Raises StorageFull when the disk is full, OSError for other I/O failures.
        """
        with self._lock.read():
            payload = faiss.serialize_index(self._index)
            count, max_id = int(self._index.ntotal), self._max_id
        view = payload.data
        header = json.dumps(
            {
                "format": _FORMAT,
                "dim": self.dim,
                "factory": self.factory,
                "count": count,
                "max_id": max_id,
                "model": model,
                "seq": seq,
                "payload_bytes": len(view),
                "crc32": zlib.crc32(view),
            }
        ).encode()
        write_atomic(path, [MAGIC, _HEADER_LEN.pack(len(header)), header, view])

    @classmethod
    def load(cls, path: Path, expected_dim: int, model: str | None = None) -> VectorIndex | None:
        """Read a snapshot written by ``save``; None (logged) when it is missing, truncated,
        corrupt, of another dimension or model, or of a type this package does not serve.

        Never raises for a bad file: the catalog can always rebuild the index.
        """
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            log.info("no vector snapshot at %s", path)
            return None
        except OSError as exc:
            log.warning("cannot read vector snapshot %s: %s", path, exc)
            return None
        try:
            return cls._decode(memoryview(raw), expected_dim, model)
        except (ValueError, KeyError, TypeError, RuntimeError, struct.error) as exc:
            log.warning("ignoring vector snapshot %s: %s", path, exc)
            return None

    @classmethod
    def _decode(cls, raw: memoryview, expected_dim: int, model: str | None) -> VectorIndex:
        if raw[: len(MAGIC)] != MAGIC:
            raise ValueError("not a vector snapshot (bad magic)")
        start = len(MAGIC) + _HEADER_LEN.size
        (header_len,) = _HEADER_LEN.unpack(raw[len(MAGIC) : start])
        header = json.loads(bytes(raw[start : start + header_len]))
        if not isinstance(header, dict) or header.get("format") != _FORMAT:
            raise ValueError("unknown snapshot format")
        payload = raw[start + header_len :]
        if len(payload) != header["payload_bytes"]:
            raise ValueError(f"truncated: {len(payload)} of {header['payload_bytes']} bytes")
        if zlib.crc32(payload) != header["crc32"]:
            raise ValueError("checksum mismatch")
        if header["dim"] != expected_dim:
            raise ValueError(f"dimension {header['dim']}, expected {expected_dim}")
        if model is not None and header["model"] != model:
            raise ValueError(f"written for model {header['model']!r}, not {model!r}")
        index = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
        if not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"unexpected index type {type(index).__name__}")
        if index.d != expected_dim or index.ntotal != header["count"]:
            raise ValueError("header does not match the index")
        loaded = cls(index, str(header["factory"]), expected_dim)
        if describe(loaded.factory).kind == "other":
            raise ValueError(f"unsupported factory {loaded.factory!r}")
        loaded._max_id = max(loaded._max_id, int(header["max_id"]))
        seq = header.get("seq")
        loaded.seq = int(seq) if seq is not None else None
        return loaded


@contextmanager
def _one_thread_for(queries: int) -> Iterator[None]:
    """Run a single-query search without an OpenMP team.

    ``IndexIDMap2`` maps labels to ids in an OpenMP loop even for one query; when the cores are
    busy (other requests encoding), waiting for that team's threads to be scheduled costs
    milliseconds, far more than the search. FAISS's thread count is per calling thread, so this
    does not affect other threads' searches.
    """
    if queries > 1:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class _Selector:
    """A FAISS IDSelector for allow/exclude sets, holding the objects it is built from alive."""

    def __init__(self, allow: Collection[int] | None, exclude: Collection[int]) -> None:
        self._keep: list[Any] = []
        parts: list[Any] = []
        if allow is not None:
            parts.append(self._batch(allow))
        if exclude:
            parts.append(self._hold(faiss.IDSelectorNot(self._batch(exclude))))
        if len(parts) == 2:
            parts = [self._hold(faiss.IDSelectorAnd(parts[0], parts[1]))]
        self.sel: Any = parts[0] if parts else None

    def _batch(self, ids: Collection[int]) -> Any:
        return self._hold(faiss.IDSelectorBatch(np.fromiter(ids, dtype=np.int64, count=len(ids))))

    def _hold(self, obj: Any) -> Any:
        self._keep.append(obj)
        return obj
