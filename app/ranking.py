"""How text-search hits are ranked and cut: the search modes, reciprocal rank fusion, the
relevance cut-off. Pure functions and values; the service applies them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RRF_K", "SEARCH_MODES", "SHOWN_DECIMALS", "CutOff", "fuse"]

SEARCH_MODES = ("vector", "keyword", "hybrid")
# Reciprocal rank fusion constant (Cormack et al. 2009): 60 keeps one list's top hit from
# outweighing an item both lists rank well.
RRF_K = 60
# Scores and match probabilities are shown rounded to this many decimals; the cut-off compares
# at the same precision, so a hit shown with exactly the bound a client sends back is kept.
SHOWN_DECIMALS = 6


@dataclass(frozen=True)
class CutOff:
    """Relevance cut-off of a text search: hits below either bound are left out."""

    min_match: float | None = None
    min_score: float | None = None

    @property
    def active(self) -> bool:
        return self.min_match is not None or self.min_score is not None

    def keeps(self, score: float, match: float | None) -> bool:
        if self.min_score is not None and round(score, SHOWN_DECIMALS) < self.min_score:
            return False
        return self.min_match is None or (
            match is not None and round(match, SHOWN_DECIMALS) >= self.min_match)


def fuse(vector: Sequence[int], keyword: Sequence[int], k: int = RRF_K) -> list[int]:
    """Reciprocal rank fusion of two ranked id lists: sum of 1/(k + rank) over the lists an id
    appears in, best first. Ties go to the better keyword rank, then the vector rank: the
    keyword side's first (every word of the query in its metadata) ties with the vector side's
    first, and the vector side returns a first hit for any query at all."""
    vrank = {i: r for r, i in enumerate(vector, 1)}
    krank = {i: r for r, i in enumerate(keyword, 1)}
    fused = {i: sum(1.0 / (k + ranks[i]) for ranks in (vrank, krank) if i in ranks)
             for i in {*vrank, *krank}}
    missing = len(vector) + len(keyword) + 1
    return sorted(fused, key=lambda i: (-fused[i], krank.get(i, missing), vrank.get(i, missing)))
