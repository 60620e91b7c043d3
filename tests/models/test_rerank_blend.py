"""The re-rank blend, RERANK_COS * cosine + RERANK_MATCH * raw match logit, on values worked out
by hand from those two published weights.

Written after the mutation run (docs/testing.md): the service-level tests cannot tell the blend
from other monotone mixes of the same two numbers, and a confident match head (a probability that
rounds to exactly 0 or 1 in float32) must not turn the score infinite.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.encoder import RERANK_COS, RERANK_MATCH, rerank_scores


def test_blend_values_by_hand() -> None:
    scores = rerank_scores(np.array([0.30, 0.32, 0.10]), np.array([0.9, 0.5, 0.1]))
    # logit(0.9) = ln 9, logit(0.5) = 0, logit(0.1) = -ln 9
    expected = [RERANK_COS * 0.30 + RERANK_MATCH * math.log(9.0), RERANK_COS * 0.32,
                RERANK_COS * 0.10 - RERANK_MATCH * math.log(9.0)]
    np.testing.assert_allclose(scores, expected, rtol=1e-9)


def test_a_confident_match_outweighs_a_small_cosine_gap_and_not_a_large_one() -> None:
    # logit(0.99) - logit(0.5) = ln 99: worth a cosine gap of RERANK_MATCH * ln 99 / RERANK_COS
    worth = RERANK_MATCH * math.log(99.0) / RERANK_COS
    close = rerank_scores(np.array([0.50, 0.50 + worth / 2]), np.array([0.99, 0.5]))
    far = rerank_scores(np.array([0.50, 0.50 + 2 * worth]), np.array([0.99, 0.5]))
    assert close[0] > close[1] and far[0] < far[1]


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_saturated_probabilities_stay_finite_and_leave_the_cosine_order(p: float) -> None:
    probs = np.array([p, p], np.float32)  # float32 sigmoid rounds to 1.0 past a logit of ~17
    scores = rerank_scores(np.array([0.2, 0.3]), probs)
    assert np.all(np.isfinite(scores)), scores
    assert scores[1] > scores[0]
    assert scores[1] - scores[0] == pytest.approx(RERANK_COS * 0.1)


def test_the_calibration_temperature_scales_the_logit_back() -> None:
    # probabilities calibrated as sigmoid(raw / T): the blend reads raw = T * logit(p) back
    raw = np.array([2.0, -1.0])
    probs = 1 / (1 + np.exp(-raw / 4.0))
    scores = rerank_scores(np.array([0.1, 0.2]), probs, 4.0)
    expected = [RERANK_COS * 0.1 + RERANK_MATCH * 2.0, RERANK_COS * 0.2 - RERANK_MATCH * 1.0]
    np.testing.assert_allclose(scores, expected, rtol=1e-9)
