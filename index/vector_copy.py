"""``VectorCopy``: the FAISS copy of the catalog's embeddings over its life, a materialised view
of the catalog's change log: loaded from its snapshot (which records the log ``seq`` it holds)
and brought up to date by replaying the log, or built from the catalog; kept up to date by
applying new log entries (``catch_up``, other processes' writes); rebuilt when the collection
outgrows its index type, and snapshotted every ``snapshot_every`` changes.

Invariant: every change up to ``seq`` is reflected. This process's own writes are applied at
once (``added``/``remove``) and may run ahead of ``seq``; applying a change is idempotent (an
``add`` of an id already held, or of a row deleted since, does nothing), so a change seen twice
is harmless.

It takes no lock of the store's: the store calls it under its write lock; searches only read
``vectors``. Snapshots are written under ``snapshot_lock`` when several processes share the data
dir, so one process writes the file at a time (another one's turn is skipped, not waited for).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import numpy.typing as npt

from index.catalog import Change
from index.catalog_factory import CatalogBackend
from index.choice import Thresholds, choose_factory, min_training_points, needs_rebuild
from index.errors import CatalogUnavailable, IndexNotReady, StoreError
from index.locks import FileLock
from index.store_startup import reconcile
from index.vectors import VectorIndex

__all__ = ["VectorCopy"]

# Logged under the store's name, as before this class moved out of index/store.py.
log = logging.getLogger("index.store")

_TRAIN_SAMPLE_MAX = 100_000
_CATCH_UP_BATCH = 10_000


class VectorCopy:
    """The vector index derived from ``catalog``, and its snapshot at ``snapshot_path``."""

    def __init__(
        self,
        catalog: CatalogBackend,
        snapshot_path: Path,
        dim: int,
        model_name: str,
        factory_setting: str,
        memory_budget_bytes: int,
        snapshot_every: int,
        thresholds: Thresholds,
        snapshot_lock: FileLock | None = None,
    ) -> None:
        self._catalog = catalog
        self._snapshot_lock = snapshot_lock
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
        self.seq = 0  # every change-log entry up to here is reflected in ``vectors``
        self.changes = 0  # since the last snapshot
        self._retry_rebuild_at = 0

    # -- start-up ----------------------------------------------------------------------------

    def load(self) -> None:
        """Load the snapshot and replay what it lacks, or build from the catalog when it is
        missing, unusable, or no longer fits the collection."""
        loaded = VectorIndex.load(self._snapshot_path, self.dim, self.model_name)
        if loaded is not None:
            self.snapshot_max_id = loaded.max_id
            self.changes = self._bring_up_to_date(loaded)
            if not self._wants_rebuild(loaded):
                self.vectors = loaded
                return
            log.info("snapshot index %s no longer fits the collection", loaded.factory)
        self.rebuild(None)

    def _bring_up_to_date(self, vectors: VectorIndex) -> int:
        """Replay the log since the snapshot's seq; fall back to comparing every id with the
        catalog when the snapshot has no seq (written before the log), is ahead of the catalog
        (a catalog restored from an older backup), or still disagrees with it afterwards (ids
        removed from an HNSW/IVF index are stored in its snapshot). Returns how many changed."""
        changed = 0
        if vectors.seq is not None and vectors.seq <= self._catalog.last_seq():
            self.seq = vectors.seq
            changed = self._replay(vectors)
            if vectors.ntotal == self._catalog.count():
                return changed
        self.seq = self._catalog.last_seq()  # read first: whatever follows is replayed later
        return changed + reconcile(vectors, self._catalog)

    # -- following the log -------------------------------------------------------------------

    def catch_up(self) -> int:
        """Apply the change-log entries after ``seq`` (other processes' writes); returns how
        many were read. A failure rebuilds the index from the catalog, as after a failed add;
        an unreachable catalog (PostgreSQL restarting) leaves the index as it is and raises
        CatalogUnavailable: the next look carries on from the same ``seq``."""
        vectors = self.vectors
        if vectors is None:
            return 0
        try:
            count = self._replay(vectors)
        except CatalogUnavailable:
            raise  # the index is sound; only the log could not be read
        except Exception:
            log.exception("applying the change log failed; rebuilding the index from the catalog")
            self._recover()
            return 0
        if count:
            self.changed(count)
        return count

    def _replay(self, vectors: VectorIndex) -> int:
        count = 0
        while True:
            batch = self._catalog.changes_since(self.seq, _CATCH_UP_BATCH)
            if not batch:
                return count
            self._apply(vectors, batch)
            self.seq = batch[-1].seq
            count += len(batch)
            if len(batch) < _CATCH_UP_BATCH:
                return count

    def _apply(self, vectors: VectorIndex, batch: list[Change]) -> None:
        """Make ``vectors`` reflect ``batch``: ids are never reused, so an item's last entry
        says whether it exists; an add reads the row's embedding (gone: deleted since)."""
        last = {change.item_id: change.op for change in batch}
        gone = [item_id for item_id, op in last.items() if op == "delete"]
        vectors.remove(gone)
        fresh = vectors.absent([item_id for item_id, op in last.items() if op == "add"])
        if fresh.size:
            ids, vecs = self._catalog.embeddings_for(fresh.tolist())
            vectors.add(ids, vecs)

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
        seq = self._catalog.last_seq()  # read first: the build holds at least this much
        self.vectors = self._build(target)
        self.seq = seq
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
        vectors = self.vectors
        if vectors is None:
            raise IndexNotReady("vector index unavailable")
        with self._snapshot_turn() as mine:
            if not mine:
                log.info("another process is writing the vector snapshot; skipping this one")
                return
            self._advance(vectors)
            vectors.save(self._snapshot_path, self.model_name, self.seq)
        self.snapshot_max_id = vectors.max_id
        self.changes = 0

    def _advance(self, vectors: VectorIndex) -> None:
        """Move ``seq`` past this process's own writes (held already), so the next start
        replays only what came after the snapshot."""
        try:
            self._replay(vectors)
        except Exception as exc:  # the snapshot is still true at the older seq
            log.warning("could not read the change log before the snapshot: %s", exc)

    def _snapshot_turn(self) -> AbstractContextManager[bool]:
        if self._snapshot_lock is None:
            return nullcontext(True)
        return self._snapshot_lock.hold_if_free()

    def snapshot_quietly(self) -> None:
        """``snapshot``, logging a failure instead of raising it."""
        # A failed snapshot loses nothing: the catalog replays it on the next start.
        try:
            self.snapshot()
        except (OSError, StoreError) as exc:
            log.warning("vector snapshot failed (the catalog still has every row): %s", exc)
