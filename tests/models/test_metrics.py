"""The bundled weights meet the issue's targets on a 300-image subset of the test split.

Each threshold is the target less two standard errors of a recall measured on N queries,
2 * sqrt(p * (1 - p) / N) at the target p: 0.046 at 0.80, 0.025 at 0.95, 0.058 at 0.60 (on 281
held-out queries). A model at the target fails by chance about once in 40 runs; the bundled
model sits well above every one (docs/model-card.md). Full-size numbers on 1,000 images:
`fusion-search eval --json`.
"""

from __future__ import annotations

import math

import pytest

from models import load_model
from models.evaluate import evaluate

N = 300


def margin(target: float, n: int = N) -> float:
    """Two standard errors of a proportion near ``target`` measured on ``n`` samples."""
    return 2 * math.sqrt(target * (1 - target) / n)


@pytest.fixture(scope="module")
def full() -> dict:
    return evaluate(load_model(), n=N, depth=20, worlds=("in_distribution",))


@pytest.fixture(scope="module")
def report(full: dict) -> dict:
    return full["in_distribution"]


def test_dual_encoder_text_to_image(report: dict) -> None:
    assert report["t2i_r1"] >= 0.80 - margin(0.80)
    assert report["t2i_r5"] >= report["t2i_r1"]
    assert report["i2t_r1"] >= 0.80 - margin(0.80)


def test_attention_rerank(report: dict) -> None:
    # depth 20, blended with the cosine (models.encoder.rerank_scores)
    assert report["t2i_r1_rerank"] >= 0.95 - margin(0.95)
    assert report["t2i_r1_rerank"] >= report["t2i_r1"] - 0.01


def test_attention_fusion_on_swapped_twins(report: dict) -> None:
    comp = report["compositional"]  # three-way choice, chance 1/3
    assert comp["attention"] >= 0.95 - margin(0.95)
    assert comp["attention"] > comp["early"] + margin(0.95)
    assert comp["attention"] > comp["late"] + margin(0.95)


def test_composed_retrieval(report: dict) -> None:
    composed = report["composed_r1"]  # per head
    assert composed["attention"] >= 0.80 - margin(0.80)
    assert composed["attention"] > composed["early"] + margin(0.80)
    assert composed["attention"] > composed["late"] + margin(0.80)


def test_heldout_colour_shape_pairs(report: dict) -> None:
    held = report["heldout_pairs_t2i_r1"]
    assert held["queries"] >= 200
    assert held["r1"] >= 0.60 - margin(0.60, held["queries"])


def test_report_has_every_field(full: dict, report: dict) -> None:
    for key in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "t2i_r1_rerank",
                "t2i_r1_rerank_by_head", "t2i_r1_by_query", "compositional", "composed_r1",
                "heldout_pairs_t2i_r1"):
        assert key in report
    heads = {"late", "early", "attention", "cross1"}
    assert set(report["compositional"]) >= heads
    assert set(report["composed_r1"]) >= heads
    assert set(report["t2i_r1_rerank_by_head"]) == heads
    assert report["gallery"] == full["sizes"]["gallery"] == N
    assert full["side_by_side"]["t2i_r1"] == {"in_distribution": report["t2i_r1"]}
