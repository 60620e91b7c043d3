"""The bundled weights meet the model card's targets on a 300-image subset of the test split.

With n = 300 queries a recall near 0.8 has a standard error of sqrt(0.8 * 0.2 / 300) = 0.023, so
each threshold below is the full-size target minus a margin of about two standard errors (0.05);
the full 1,000-image numbers are in docs/model-card.md (`fusion-search eval --json`).
"""

from __future__ import annotations

import pytest

from models import load_model
from models.evaluate import evaluate

N = 300
MARGIN = 0.05


@pytest.fixture(scope="module")
def report() -> dict:
    return evaluate(load_model(), n=N, depth=20)


def test_dual_encoder_text_to_image(report: dict) -> None:
    assert report["t2i_r1"] >= 0.80 - MARGIN
    assert report["t2i_r5"] >= report["t2i_r1"]


def test_attention_rerank_lifts_recall(report: dict) -> None:
    assert report["t2i_r1_rerank"] >= 0.95 - MARGIN
    assert report["t2i_r1_rerank"] > report["t2i_r1"]


def test_attention_fusion_binds_attributes_and_relations(report: dict) -> None:
    comp = report["compositional"]
    assert comp["attention"] >= 0.95 - MARGIN
    assert comp["attention"] > comp["early"]
    assert comp["attention"] > comp["late"]


def test_composed_retrieval(report: dict) -> None:
    composed = report["composed_r1"]
    assert composed["attention"] >= 0.80 - MARGIN
    assert composed["attention"] > composed["early"]
    assert composed["attention"] > composed["late"]


def test_heldout_colour_shape_pairs(report: dict) -> None:
    assert report["heldout_t2i_r1"] >= 0.60 - MARGIN
    assert report["heldout_queries"] >= 100


def test_report_has_every_field(report: dict) -> None:
    for key in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "t2i_r1_rerank",
                "compositional", "composed_r1", "heldout_t2i_r1", "sizes"):
        assert key in report
    assert report["sizes"]["gallery"] == N
