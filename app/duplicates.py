"""Near duplicates of stored images: the embedding proposes, the aligned pixel test of
``index.neardup`` decides (the rule and its threshold are measured in docs/search-quality.md)."""

from __future__ import annotations

import logging

from index import Item, ItemNotFound, Store
from index.neardup import DUPLICATE_THRESHOLD, Signature, signature, similarity
from models import decode_image

__all__ = ["NearDuplicates"]

log = logging.getLogger(__name__)

# The embedding proposes this many nearest images above this cosine (every edited copy measured
# has a cosine of at least 0.69 with its original: bench/quality_duplicates.py).
DUPLICATE_CANDIDATES = 5
DUPLICATE_MIN_COSINE = 0.5
SIGNATURE_CACHE = 64  # signatures (420 kB each) kept within one batch or page


class NearDuplicates:
    """Finds stored near duplicates (re-encoded, resized, slightly cropped, brightened copies)."""

    def __init__(self, store: Store, max_pixels: int) -> None:
        self._store = store
        self._max_pixels = max_pixels

    def _signature(self, item_id: int, cache: dict[int, Signature] | None = None) -> Signature:
        """Raises ItemNotFound, StoreError for a missing file, BadImage for an unreadable one."""
        if cache is not None and item_id in cache:
            return cache[item_id]
        path, _ = self._store.file_path(item_id)
        # a JPEG is decoded at 1/2 to 1/8 scale: the signature reads a 96-pixel copy
        image = decode_image(path.read_bytes(), self._max_pixels, reduce_to=(192, 192)).image
        sig = signature(image)
        if cache is not None:
            if len(cache) >= SIGNATURE_CACHE:
                cache.clear()
            cache[item_id] = sig
        return sig

    def of(self, item_id: int, cache: dict[int, Signature] | None = None
           ) -> list[tuple[Item, float]]:
        """Stored near duplicates of a stored image (re-encoded, resized, slightly cropped,
        brightened copies), most similar first, as (item, similarity).

        Candidates are the image's nearest neighbours by embedding; each is confirmed by the
        aligned pixel test of ``index.neardup`` (threshold chosen in docs/search-quality.md).
        ``cache`` keeps signatures between calls (a batch of uploads, a page of groups).
        Raises ItemNotFound.
        """
        self._store.get(item_id)
        emb = self._store.embedding(item_id)
        candidates = self._store.search(emb[None, :], DUPLICATE_CANDIDATES,
                                        exclude_ids={item_id})[0]
        mine = self._signature(item_id, cache)
        found: list[tuple[int, float]] = []
        for cand, cosine in candidates:
            if cosine < DUPLICATE_MIN_COSINE:
                break
            try:
                sim = similarity(mine, self._signature(cand, cache))
            except Exception as exc:  # deleted meanwhile, or its file unreadable
                log.info("near-duplicate check of %d skipped: %s", cand, exc)
                continue
            if sim >= DUPLICATE_THRESHOLD:
                found.append((cand, sim))
        items = self._store.get_many([i for i, _ in found])
        return sorted(((items[i], s) for i, s in found if i in items), key=lambda p: -p[1])

    def groups(self, offset: int, limit: int
               ) -> tuple[list[tuple[Item, list[tuple[Item, float]]]], int]:
        """Groups of near duplicates among one page of the collection (newest first): each
        image of the page that has near duplicates, with them. Returns (groups, the number of
        images paged over). Raises ValueError for a negative offset or limit."""
        items, total = self._store.list(offset=offset, limit=limit)
        groups = []
        cache: dict[int, Signature] = {}
        for item in items:
            try:
                dups = self.of(item.id, cache)
            except ItemNotFound:  # deleted meanwhile
                continue
            if dups:
                groups.append((item, dups))
        return groups, total
