"""The stage-1 object read-out from patch tokens and the stage-2 twin ranking loss."""

from __future__ import annotations

import math

import pytest
import torch

from models import synthetic as syn
from models.train import OBJECT_CLASSES, OBJECT_FIELDS, object_loss, object_targets, twin_loss

N_CLASSES = sum(OBJECT_CLASSES)


def _one_hot_logits(obj: syn.Obj) -> torch.Tensor:
    """The logit vector that names ``obj`` (shape, colour, size) with high confidence."""
    out = torch.full((N_CLASSES,), -10.0)
    start = 0
    for name, vocab in OBJECT_FIELDS:
        out[start + vocab.index(getattr(obj, name))] = 10.0
        start += len(vocab)
    return out


def _tokens_naming(obj: syn.Obj, row: int, col: int, side: int = 8) -> torch.Tensor:
    """(1, 1 + side², N_CLASSES) tokens, a class token first, with ``obj`` named at one patch."""
    tok = torch.zeros(1, 1 + side * side, N_CLASSES)
    tok[0, 1 + row * side + col] = _one_hot_logits(obj)
    return tok


def test_object_targets_place_each_object_on_the_sampling_grid() -> None:
    scene = syn.Scene("gray", (syn.Obj("star", "green", "large", 0.25, 0.75),
                               syn.Obj("circle", "red", "small", 0.5, 0.5)))
    lone = syn.Scene("teal", (syn.Obj("cross", "white", "small", 0.9, 0.1),))
    grid, labels = object_targets([scene, lone])
    assert grid[0, 0, 0].tolist() == pytest.approx([-0.5, 0.5])  # x first, then y
    assert grid[1, 0, 0].tolist() == pytest.approx([0.8, -0.8])
    assert labels[0, 0].tolist() == [syn.SHAPES.index("star"), syn.COLORS.index("green"),
                                     syn.SIZES.index("large")]
    assert labels[1, 1].tolist() == [-1, -1, -1]  # no second object: ignored by the loss


def test_object_loss_reads_the_patch_under_the_object() -> None:
    obj = syn.Obj("triangle", "blue", "small", (5 + 0.5) / 8, (2 + 0.5) / 8)  # row 2, column 5
    scene = syn.Scene("gray", (obj,))
    head = torch.nn.Identity()
    right = object_loss(head, _tokens_naming(obj, row=2, col=5), [scene])
    transposed = object_loss(head, _tokens_naming(obj, row=5, col=2), [scene])
    assert float(right) < 1e-3
    # elsewhere the token is zero: uniform guesses over 5 shapes, 8 colours, 2 sizes
    assert float(transposed) == pytest.approx(math.log(5) + math.log(8) + math.log(2), rel=1e-4)


def test_twin_loss_rewards_ranking_the_true_caption_first() -> None:
    groups = [[0, 1, 2], [3, 4]]  # a true caption with two twins, then with one
    good = torch.tensor([5.0, 0.0, 0.0, 4.0, -4.0])
    bad = torch.tensor([0.0, 5.0, 0.0, -4.0, 4.0])
    assert float(twin_loss(good, groups)) < 0.02
    assert float(twin_loss(bad, groups)) > 5.0
    # a padded slot never counts as a twin: the two-caption group is a plain two-way choice
    two = torch.tensor([0.0, 0.0])
    assert float(twin_loss(two, [[0, 1]])) == pytest.approx(math.log(2))
