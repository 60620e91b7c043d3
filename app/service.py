"""The retrieval service: wires a model (models/) to a store (index/). No HTTP here."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from index import Item, ItemNotFound, Store, Upload
from index.vectors import VectorIndex
from models import DecodedImage, RetrievalModel, decode_image
from models.encoder import rerank_scores
from models.retrieval import EncodedQuery

from .batching import TextBatcher
from .duplicates import NearDuplicates
from .ranking import SEARCH_MODES, CutOff, fuse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileIn:
    """One uploaded file as received."""

    data: bytes
    filename: str | None


@dataclass(frozen=True)
class ScoredHit:
    item: Item
    score: float
    match: float | None = None
    vector_rank: int | None = None
    keyword_rank: int | None = None


@dataclass(frozen=True)
class Results:
    hits: list[ScoredHit]
    took_ms: float
    reranked: bool
    filtered: int = 0  # candidates the relevance cut-off removed


class CaptionIndex:
    """Text embeddings of stored captions for image->text search.

    Derived data: built from the catalog on first use and kept current on upload and delete.
    """

    def __init__(self, model: RetrievalModel, store: Store) -> None:
        self._model = model
        self._store = store
        self._index: VectorIndex | None = None
        self._lock = threading.Lock()

    def _build(self) -> VectorIndex:
        index = VectorIndex.create(self._model.embed_dim, "Flat")
        offset, page = 0, 2000
        while True:
            items, total = self._store.list(offset=offset, limit=page)
            self._add_to(index, items)
            offset += page
            if offset >= total:
                return index

    def _add_to(self, index: VectorIndex, items: Sequence[Item]) -> None:
        captioned = [it for it in items if it.caption]
        if captioned:
            vecs = self._model.encode_texts([it.caption or "" for it in captioned])
            index.add(np.asarray([it.id for it in captioned], np.int64), vecs)

    def ensure(self) -> VectorIndex:
        with self._lock:
            if self._index is None:
                self._index = self._build()
            return self._index

    def added(self, items: Sequence[Item]) -> None:
        with self._lock:
            if self._index is not None:
                self._add_to(self._index, items)

    def removed(self, item_id: int) -> None:
        with self._lock:
            if self._index is not None:
                self._index.remove([item_id])


class SearchService:
    """Upload, search and explain, over one model and one store."""

    def __init__(
        self,
        model: RetrievalModel,
        store: Store,
        *,
        rerank_depth: int = 20,
        max_pixels: int = 40_000_000,
        text_batch: int = 16,
    ) -> None:
        self.model = model
        self.store = store
        self.rerank_depth = rerank_depth
        self.max_pixels = max_pixels
        self.captions = CaptionIndex(model, store)
        self.duplicates = NearDuplicates(store, max_pixels)
        # concurrent text queries share one encoder pass (app/batching.py); 1 turns it off
        self.text_encoder = TextBatcher(model.encode_queries, max_batch=text_batch)

    # ---- writes -------------------------------------------------------------------------------
    def decode(self, data: bytes) -> DecodedImage:
        """Raises BadImage / UnsupportedImageType / ImageTooLarge."""
        return decode_image(data, self.max_pixels)

    def upload(
        self, files: Sequence[FileIn], caption: str | None, tags: Sequence[str]
    ) -> list[tuple[Item, bool]]:
        """Decode every file first (all or nothing), then encode and store them in one batch.

        Raises BadImage (and subclasses) before anything is written; StorageFull.
        """
        decoded = [self.decode(f.data) for f in files]
        pairs = zip(files, decoded, strict=True)
        return self.store_decoded([(f.data, d, f.filename, caption, list(tags)) for f, d in pairs])

    def store_decoded(
        self,
        records: Sequence[tuple[bytes, DecodedImage, str | None, str | None, list[str]]],
    ) -> list[tuple[Item, bool]]:
        """Encode already decoded images and store them in one catalog transaction.

        Raises StorageFull (nothing of the batch is stored).
        """
        return self.commit_uploads(self.prepare_uploads(records))

    def prepare_uploads(
        self,
        records: Sequence[tuple[bytes, DecodedImage, str | None, str | None, list[str]]],
    ) -> list[Upload]:
        """The encoding half of ``store_decoded``: uploads ready for ``commit_uploads``.

        Images already stored (same sha256) are not encoded again; they carry a placeholder.
        Bulk ingest encodes the next batch while the previous one is being committed.
        """
        digests = [hashlib.sha256(data).hexdigest() for data, *_ in records]
        todo = [i for i, sha in enumerate(digests) if self.store.get_by_sha(sha) is None]
        emb = np.zeros((0, self.model.embed_dim), np.float32)
        tok: np.ndarray | None = None
        if todo:
            emb, tok = self.model.encode_images_with_tokens([records[i][1].image for i in todo])
        vec_of = {i: j for j, i in enumerate(todo)}
        uploads = []
        for i, (data, img, name, caption, tags) in enumerate(records):
            j = vec_of.get(i)
            uploads.append(Upload(
                data=data, sha256=digests[i], ext=img.ext, content_type=img.content_type,
                embedding=emb[j] if j is not None else np.zeros(self.model.embed_dim, np.float32),
                tokens=tok[j] if (j is not None and tok is not None) else None,
                width=img.width, height=img.height, original_name=_safe_name(name),
                caption=(caption or None), tags=tags,
            ))
        return uploads

    def commit_uploads(self, uploads: Sequence[Upload]) -> list[tuple[Item, bool]]:
        """The storing half of ``store_decoded``: one catalog transaction, (item, duplicate)
        per upload in order; repeats, in the batch or of stored items, are duplicates.

        Raises StorageFull (nothing of the batch is stored); ValueError when an image that was
        stored when its upload was prepared has been deleted since (its placeholder embedding
        cannot be stored).
        """
        results = self.store.add_many(uploads)
        self.captions.added([item for item, dup in results if not dup])
        return results

    def delete(self, item_id: int) -> Item:
        """Raises ItemNotFound."""
        item = self.store.delete(item_id)
        self.captions.removed(item_id)
        return item

    # ---- searches -----------------------------------------------------------------------------
    def _hits(self, pairs: Sequence[tuple[int, float]], k: int,
              match: dict[int, float] | None = None) -> list[ScoredHit]:
        """The first ``k`` of ``pairs`` still stored, with their items: fetched k at a time
        (a re-rank's depth of 50 reads 10 rows, not 52), more only for items deleted while we
        searched."""
        out: list[ScoredHit] = []
        start = 0
        while len(out) < k and start < len(pairs):
            chunk = pairs[start : start + k - len(out)]
            start += len(chunk)
            items = self.store.get_many([i for i, _ in chunk])
            for item_id, score in chunk:
                item = items.get(item_id)
                if item is not None:
                    out.append(ScoredHit(item, float(score), (match or {}).get(item_id)))
        return out

    def search_text(self, query: str, k: int, tags: Sequence[str] | None,
                    rerank: bool | None, mode: str = "vector", cutoff: CutOff | None = None,
                    keyword_syntax: str = "terms") -> Results:
        """Text -> image search.

        ``mode``: ``vector`` (the dual encoder, then the attention re-rank), ``keyword`` (BM25
        over captions, tags and original file names) or ``hybrid`` (reciprocal rank fusion of
        the re-ranked vector list and the keyword list). ``cutoff`` leaves out hits under its
        match probability or cosine; ``Results.filtered`` says how many.

        Raises BadQuery for a keyword query that does not parse (``keyword_syntax="fts5"``),
        ValueError for an unknown mode.
        """
        if mode not in SEARCH_MODES:
            raise ValueError(f"unknown search mode {mode!r}")
        t0 = time.perf_counter()
        cutoff = cutoff or CutOff()
        # the keyword query is checked first: a syntax error costs no encoder pass
        keyword: list[int] = []
        do_rerank = self.model.has_fusion if rerank is None else rerank
        depth = max(k, self.rerank_depth) if do_rerank else k
        if mode != "vector":
            keyword = [i for i, _ in self.store.keyword_search(
                query, depth + 2, tags=tags, syntax=keyword_syntax)]
        encoded = self.text_encoder.encode_one(query)
        qvec = encoded.vector[None, :]
        pairs: list[tuple[int, float]] = []
        match: dict[int, float] = {}
        if mode != "keyword":
            pairs = self.store.search(qvec, depth + 2, tags=tags)[0]
            if do_rerank and pairs:
                pairs, match = self._rerank(encoded, pairs)
        vector = [i for i, _ in pairs]
        order = (vector if mode == "vector" else keyword if mode == "keyword"
                 else fuse(vector, keyword))
        score = dict(pairs)
        missing = [i for i in order if i not in score]
        if missing:  # keyword-only hits: their cosine from the stored embeddings
            with contextlib.suppress(ItemNotFound):  # deleted meanwhile: dropped by _hits
                score.update(zip(missing, (self.store.embeddings(missing) @ qvec[0]).tolist(),
                                 strict=True))
        if cutoff.min_match is not None:
            match.update(self._match(encoded, [i for i in order if i not in match]))
        elif do_rerank and mode != "vector":  # keyword hits scored too, for a uniform answer
            match.update(self._match(encoded, [i for i in order[:k] if i not in match]))
        vrank = {i: r for r, i in enumerate(vector, 1)}
        krank = {i: r for r, i in enumerate(keyword, 1)}
        # the cut-off needs only scores: items are read for the hits shown
        ranked = [(i, score.get(i, 0.0)) for i in order]
        keeps = [cutoff.keeps(s, match.get(i)) for i, s in ranked]
        filtered = keeps[:k].count(False)
        kept = [ScoredHit(it.item, it.score, it.match, vrank.get(it.item.id),
                          krank.get(it.item.id))
                for it in self._hits([p for p, ok in zip(ranked, keeps, strict=True) if ok], k,
                                     match)]
        reranked = do_rerank and mode != "keyword"
        return Results(kept, _ms(t0), reranked, filtered)

    def _match(self, query: EncodedQuery, ids: list[int]) -> dict[int, float]:
        """Match probabilities of these items with the query (items without tokens left out)."""
        if not ids:
            return {}
        try:
            probs = self.model.match(self.store.tokens(ids), query,
                                     embeddings=self.store.embeddings(ids))
        except Exception as exc:  # an item stored without tokens or deleted meanwhile
            log.info("match skipped: %s", exc)
            return {}
        return {i: float(p) for i, p in zip(ids, probs, strict=True)}

    def _rerank(self, query: EncodedQuery, pairs: list[tuple[int, float]]
                ) -> tuple[list[tuple[int, float]], dict[int, float]]:
        head = pairs[: self.rerank_depth]
        ids = [i for i, _ in head]
        try:
            tokens = self.store.tokens(ids)
            emb = self.store.embeddings(ids)
        except Exception as exc:  # an item stored without tokens or deleted meanwhile
            log.info("re-rank skipped: %s", exc)
            return pairs, {}
        probs = self.model.match(tokens, query, embeddings=emb)
        blended = rerank_scores(np.asarray([score for _, score in head]), probs,
                                self.model.temperature)
        order = sorted(range(len(head)), key=lambda j: -float(blended[j]))
        return [head[j] for j in order] + pairs[len(head):], \
            {ids[j]: float(probs[j]) for j in range(len(ids))}

    def search_vector(self, qvec: np.ndarray, k: int, tags: Sequence[str] | None,
                      exclude: Sequence[int] = ()) -> list[ScoredHit]:
        pairs = self.store.search(qvec[None, :], k + 2, tags=tags, exclude_ids=set(exclude))[0]
        return self._hits(pairs, k)

    def search_image(self, image: DecodedImage | None, image_id: int | None, k: int,
                     tags: Sequence[str] | None, target: str) -> Results:
        """Raises ItemNotFound for an unknown image_id."""
        t0 = time.perf_counter()
        if image_id is not None:
            self.store.get(image_id)
            qvec = self.store.embedding(image_id)
            exclude: list[int] = [image_id]
        else:
            assert image is not None
            qvec = self.model.encode_images([image.image])[0]
            exclude = []
        if target == "captions":
            return Results(self._caption_hits(qvec, k, tags, exclude), _ms(t0), False)
        return Results(self.search_vector(qvec, k, tags, exclude), _ms(t0), False)

    def _caption_hits(self, qvec: np.ndarray, k: int, tags: Sequence[str] | None,
                      exclude: Sequence[int]) -> list[ScoredHit]:
        """Nearest captions; the tag filter runs after the search, so widen it until k pass."""
        index = self.captions.ensure()
        wanted = set(tags or ())
        depth = k + 2
        while True:
            pairs = index.search(qvec[None, :], depth, block=set(exclude))[0]
            hits = self._hits(pairs, len(pairs))
            hits = [h for h in hits if wanted.issubset(h.item.tags)]
            if len(hits) >= k or depth >= index.ntotal:
                return hits[:k]
            depth *= 4

    def search_composed(self, image: DecodedImage | None, image_id: int | None, text: str,
                        k: int, tags: Sequence[str] | None) -> Results:
        """Raises ItemNotFound for an unknown image_id."""
        t0 = time.perf_counter()
        if image_id is not None:
            self.store.get(image_id)
            emb = self.store.embedding(image_id)[None, :]
            tokens = self._tokens_or_encode(image_id)
            qvec = self.model.compose_from(tokens, emb, [text])[0]
            exclude = [image_id]
        else:
            assert image is not None
            qvec = self.model.compose([image.image], [text])[0]
            exclude = []
        return Results(self.search_vector(qvec, k, tags, exclude), _ms(t0), False)

    def _tokens_or_encode(self, item_id: int) -> np.ndarray:
        try:
            return self.store.tokens([item_id])
        except Exception:  # stored without tokens: re-encode the stored file
            path, _ = self.store.file_path(item_id)
            img = decode_image(path.read_bytes(), self.max_pixels)
            return self.model.image_tokens([img.image])

    def explain(self, image_id: int, text: str) -> dict[str, object]:
        """Raises ItemNotFound; ModelLoadError when the model has no fusion head."""
        self.store.get(image_id)
        tokens = self._tokens_or_encode(image_id)[0]
        emb = self.store.embedding(image_id)
        return self.model.explain(tokens, emb, text)

    def _query_tokens(self, image: DecodedImage | None, image_id: int | None) -> np.ndarray:
        """One image's patch tokens (T, W): the stored ones for an id, else encoded now."""
        if image_id is not None:
            self.store.get(image_id)
            return self._tokens_or_encode(image_id)[0]
        assert image is not None
        return self.model.image_tokens([image.image])[0]

    def ask(self, image: DecodedImage | None, image_id: int | None,
            question: str) -> dict[str, Any]:
        """Answer a question about a stored (image_id) or uploaded image.

        Raises ItemNotFound; HeadNotAvailable when the model has no question-answering head.
        """
        return self.model.ask(self._query_tokens(image, image_id), question)

    def describe(self, image: DecodedImage | None, image_id: int | None) -> dict[str, Any]:
        """Caption a stored (image_id) or uploaded image.

        Raises ItemNotFound; HeadNotAvailable when the model has no captioning head.
        """
        return self.model.describe(self._query_tokens(image, image_id))

    def info(self) -> dict[str, object]:
        return {**self.model.info(), **self.store.stats()}


def _safe_name(name: str | None) -> str | None:
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1].replace("\x00", "")
    return base[:255] or None


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)
