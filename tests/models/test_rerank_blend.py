"""The re-rank blend, 30 * cosine + 0.5 * logit(match probability), on values worked out by hand.

Written after the mutation run (docs/testing.md): the service-level tests cannot tell the blend
from other monotone mixes of the same two numbers, and a confident match head (a probability that
rounds to exactly 0 or 1 in float32) must not turn the score infinite.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.encoder import rerank_scores


def test_blend_values_by_hand() -> None:
    scores = rerank_scores(np.array([0.30, 0.32, 0.10]), np.array([0.9, 0.5, 0.1]))
    # 30 * 0.30 + 0.5 * ln(0.9 / 0.1); 30 * 0.32 + 0.5 * ln(1); 30 * 0.10 + 0.5 * ln(0.1 / 0.9)
    expected = [9.0 + 0.5 * math.log(9.0), 9.6, 3.0 - 0.5 * math.log(9.0)]
    np.testing.assert_allclose(scores, expected, rtol=1e-9)
    assert list(np.argsort(-scores)) == [0, 1, 2]


def test_a_confident_match_outweighs_a_small_cosine_gap_and_not_a_large_one() -> None:
    # logit(0.99) - logit(0.5) = ln 99 ~ 4.595; halved ~ 2.30, worth a cosine gap of ~0.077
    close = rerank_scores(np.array([0.50, 0.55]), np.array([0.99, 0.5]))
    far = rerank_scores(np.array([0.50, 0.60]), np.array([0.99, 0.5]))
    assert close[0] > close[1] and far[0] < far[1]


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_saturated_probabilities_stay_finite_and_leave_the_cosine_order(p: float) -> None:
    probs = np.array([p, p], np.float32)  # float32 sigmoid rounds to 1.0 past a logit of ~17
    scores = rerank_scores(np.array([0.2, 0.3]), probs)
    assert np.all(np.isfinite(scores)), scores
    assert scores[1] > scores[0]
    assert scores[1] - scores[0] == pytest.approx(30 * 0.1)
