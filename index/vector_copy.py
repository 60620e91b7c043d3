"""``VectorCopy``: the FAISS copy of the catalog's embeddings over its life: loaded from its
snapshot (replaying what it lacks) or built from the catalog, rebuilt when the collection
outgrows its index type, and snapshotted every ``snapshot_every`` changes.

It takes no lock: the store calls it under its write lock; searches only read ``vectors``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt

from index.catalog import Catalog
from index.choice import Thresholds, choose_factory, min_training_points, needs_rebuild
from index.errors import IndexNotReady, StoreError
from index.store_startup import reconcile
from index.vectors import VectorIndex

__all__ = ["VectorCopy"]

# Logged under the store's name, as before this class moved out of index/store.py.
log = logging.getLogger("index.store")

_TRAIN_SAMPLE_MAX = 100_000


class VectorCopy:
    """The vector index derived from ``catalog``, and its snapshot at ``snapshot_path``."""

    def __init__(
        self,
        catalog: Catalog,
        snapshot_path: Path,
        dim: int,
        model_name: str,
        factory_setting: str,
        memory_budget_bytes: int,
        snapshot_every: int,
        thresholds: Thresholds,
    ) -> None:
        self._catalog = catalog
        self._snapshot_path = snapshot_path
        self.dim = dim
        self.model_name = model_name
        self.factory_setting = factory_setting
        self.memory_budget_bytes = memory_budget_bytes
        self.snapshot_every = snapshot_every
        self.thresholds = thresholds
        # None while unavailable: searches answer IndexNotReady
        self.vectors: VectorIndex | None = None
        self.snapshot_max_id: int | None = None
        self.changes = 0  # since the last snapshot
        self._retry_rebuild_at = 0

    # -- start-up ----------------------------------------------------------------------------

    def load(self) -> None:
        """Load the snapshot and replay what it lacks, or build from the catalog when it is
        missing, unusable, or no longer fits the collection."""
        loaded = VectorIndex.load(self._snapshot_path, self.dim, self.model_name)
        if loaded is not None:
            self.snapshot_max_id = loaded.max_id
            self.changes = reconcile(loaded, self._catalog)
            if not self._wants_rebuild(loaded):
                self.vectors = loaded
                return
            log.info("snapshot index %s no longer fits the collection", loaded.factory)
        self.rebuild(None)

    # -- index choice ------------------------------------------------------------------------

    def _desired_factory(self, count: int) -> str:
        if self.factory_setting == "auto":
            return choose_factory(count, self.dim, self.memory_budget_bytes, self.thresholds)
        if count < min_training_points(self.factory_setting):
            return "Flat"
        return self.factory_setting

    def _wants_rebuild(self, vectors: VectorIndex) -> bool:
        count = vectors.ntotal
        dead = vectors.tombstones
        if dead > self.thresholds.compact_min and dead > self.thresholds.compact_fraction * (
            count + dead
        ):
            return True
        if self.factory_setting == "auto":
            return needs_rebuild(
                vectors.factory, count, self.dim, self.memory_budget_bytes, self.thresholds
            )
        return vectors.factory != self._desired_factory(count)

    def _build(self, factory: str) -> VectorIndex:
        """A new index of this type filled from the catalog."""
        vectors = VectorIndex.create(self.dim, factory)
        if not vectors.is_trained:
            try:
                vectors.train(self._training_sample())
            except (RuntimeError, ValueError) as exc:
                log.warning(
                    "cannot train %s (%s); using Flat until there is more data", factory, exc
                )
                vectors = VectorIndex.create(self.dim, "Flat")
                # Try again only after clear growth, not on every write.
                self._retry_rebuild_at = self._grown(self._catalog.count())
        for ids, vecs in self._catalog.embeddings():
            vectors.add(ids, vecs)
        return vectors

    def _training_sample(self) -> npt.NDArray[np.float32]:
        count = self._catalog.count()
        keep = min(1.0, _TRAIN_SAMPLE_MAX / max(count, 1))
        rng = np.random.default_rng(0)
        parts = [vecs[rng.random(len(vecs)) < keep] for _, vecs in self._catalog.embeddings()]
        return np.vstack(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    def rebuild(self, factory: str | None) -> None:
        """Build a new index from the catalog (``factory`` overrides the choice), swap it in and
        snapshot it. Raises ValueError for a factory FAISS cannot build."""
        count = self._catalog.count()
        target = factory or self._desired_factory(count)
        log.info("building a %s index over %d vectors", target, count)
        self.vectors = self._build(target)
        self.changes = 0
        self.snapshot_quietly()

    # -- after writes ------------------------------------------------------------------------

    def added(self, ids: npt.NDArray[np.int64], vecs: npt.NDArray[np.float32]) -> None:
        """Mirror committed rows; the rows are durable whatever happens here."""
        try:
            if self.vectors is None:
                raise IndexNotReady("vector index unavailable")
            self.vectors.add(ids, vecs)
        except Exception:
            log.exception("adding to the vector index failed; rebuilding it from the catalog")
            self._recover()
            return
        self.changed(len(ids))

    def remove(self, item_id: int) -> None:
        """Drop a deleted row's vector (call ``changed`` after)."""
        if self.vectors is not None:
            self.vectors.remove([item_id])

    def changed(self, count: int) -> None:
        """Count ``count`` changes, then rebuild when the index type no longer fits, else
        snapshot when due."""
        self.changes += count
        vectors = self.vectors
        if vectors is None:
            return
        if vectors.ntotal >= self._retry_rebuild_at and self._wants_rebuild(vectors):
            try:
                self.rebuild(None)
            except Exception:
                log.exception("rebuilding the vector index failed; keeping the current one")
                self._retry_rebuild_at = self._grown(vectors.ntotal)
        elif self.changes >= self.snapshot_every:
            self.snapshot_quietly()

    def _grown(self, count: int) -> int:
        """The count past which a failed rebuild is worth another try."""
        return int(count * (1 + self.thresholds.hysteresis)) + 1

    def _recover(self) -> None:
        try:
            self.rebuild(None)
        except Exception:
            log.exception("vector index rebuild failed; searches answer IndexNotReady")
            self.vectors = None

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> None:
        """Write the snapshot now.

        Raises IndexNotReady when there is no usable index, StorageFull when the disk is full,
        OSError for other I/O failures.
        """
        if self.vectors is None:
            raise IndexNotReady("vector index unavailable")
        self.vectors.save(self._snapshot_path, self.model_name)
        self.snapshot_max_id = self.vectors.max_id
        self.changes = 0

    def snapshot_quietly(self) -> None:
        """``snapshot``, logging a failure instead of raising it."""
        # A failed snapshot loses nothing: the catalog replays it on the next start.
        try:
            self.snapshot()
        except (OSError, StoreError) as exc:
            log.warning("vector snapshot failed (the catalog still has every row): %s", exc)
