"""The store's vector search: unfiltered and widely filtered queries go to FAISS, a small
filtered candidate set is scored exactly from the catalog's vectors."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt

from index.catalog_factory import CatalogBackend
from index.choice import Thresholds
from index.errors import IndexNotReady
from index.uploads import clean_tags
from index.vectors import Hits, VectorIndex, as_matrix

__all__ = ["exact_search", "vector_search"]


def vector_search(
    vectors: VectorIndex | None,
    catalog: CatalogBackend,
    dim: int,
    thresholds: Thresholds,
    query_vecs: npt.ArrayLike,
    k: int,
    tags: Sequence[str] | None,
    exclude_ids: Collection[int],
) -> list[Hits]:
    """Top-k (id, inner-product score) per query row, best first; see ``Store.search``.

    Raises ValueError for k < 1 or bad queries, DimensionMismatch for queries of another
    dimension than ``dim``, IndexNotReady when ``vectors`` is None.
    """
    if vectors is None:
        raise IndexNotReady("vector index unavailable")
    if k < 1:
        raise ValueError("k must be at least 1")
    matrix = as_matrix(query_vecs, dim)
    wanted = clean_tags(tags)
    if not wanted:
        return vectors.search(matrix, k, block=set(exclude_ids))
    allow = catalog.ids_with_tags(wanted).difference(exclude_ids)
    if len(allow) <= thresholds.exact_filter_max:
        return exact_search(catalog, matrix, k, allow)
    return vectors.search(matrix, k, allow=allow)


def exact_search(
    catalog: CatalogBackend, matrix: npt.NDArray[np.float32], k: int, allow: Collection[int]
) -> list[Hits]:
    """Score a small candidate set exactly from the catalog's vectors."""
    ids, vecs = catalog.embeddings_for(allow)
    if ids.size == 0:
        return [[] for _ in range(matrix.shape[0])]
    scores = matrix @ vecs.T
    top = min(k, ids.size)
    hits: list[Hits] = []
    for row in scores:
        best = np.argpartition(-row, top - 1)[:top]
        best = best[np.argsort(-row[best], kind="stable")]
        hits.append([(int(ids[i]), float(row[i])) for i in best])
    return hits
