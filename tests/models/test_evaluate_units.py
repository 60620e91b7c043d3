"""The metric arithmetic of models/evaluate.py on inputs small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluate import _rank, recall_at

# Three queries over a gallery of four items.
SCORES = np.array([
    [0.1, 0.9, 0.3, 0.5],   # best first: 1, 3, 2, 0
    [0.7, 0.2, 0.8, -0.4],  # 2, 0, 1, 3
    [0.0, 0.0, 0.6, 0.2],   # 2, 3, then 0 and 1 tie
])
RELEVANT = np.array([
    [False, False, True, False],  # query 0's relevant item (2) comes third
    [True, False, False, False],  # query 1's (0) comes second
    [False, False, True, True],   # query 2's two (2, 3) come first and second
])


def test_rank_orders_each_row_best_first() -> None:
    ranked = _rank(SCORES, 2)
    assert ranked.tolist() == [[1, 3], [2, 0], [2, 3]]
    full = _rank(SCORES, 4)
    assert full[:2].tolist() == [[1, 3, 2, 0], [2, 0, 1, 3]]
    assert full[2, :2].tolist() == [2, 3] and sorted(full[2, 2:].tolist()) == [0, 1]


def test_rank_clips_k_to_the_gallery() -> None:
    assert _rank(SCORES, 10).shape == (3, 4)
    assert _rank(SCORES[:, :1], 5).tolist() == [[0], [0], [0]]


@pytest.mark.parametrize(("k", "expected"), [
    (1, 1 / 3),  # only query 2 has a relevant item first
    (2, 2 / 3),  # query 1's comes second
    (3, 1.0),    # query 0's comes third
    (4, 1.0),
])
def test_recall_at_counts_queries_with_a_relevant_item_in_the_top_k(
        k: int, expected: float) -> None:
    assert recall_at(_rank(SCORES, 4), RELEVANT, k) == pytest.approx(expected)


def test_recall_at_reads_the_relevance_of_the_ranked_items_not_the_first_columns() -> None:
    ranked = np.array([[3, 2], [1, 0]])
    relevant = np.array([[True, True, False, False], [False, False, True, True]])
    assert recall_at(ranked, relevant, 2) == 0.0
    assert recall_at(np.array([[0, 3], [0, 3]]), relevant, 1) == 0.5


def test_recall_without_any_relevant_item_is_zero() -> None:
    assert recall_at(_rank(SCORES, 4), np.zeros((3, 4), bool), 4) == 0.0
