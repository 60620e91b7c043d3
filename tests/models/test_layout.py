"""The layout targets of stage 1 and the patch coordinates of the fusion heads."""

from __future__ import annotations

import pytest
import torch

from models import synthetic as syn
from models.fusion import Batch, FusionConfig, FusionHeads, PatchCoords
from models.train import LAYOUT_SLOTS, claim_layout, layout_targets


def _slot(kind: str, value: str) -> int:
    return LAYOUT_SLOTS.index((kind, value))


def _scene(a: tuple[str, str, float, float], b: tuple[str, str, float, float]) -> syn.Scene:
    return syn.Scene("gray", (syn.Obj(a[0], a[1], "small", a[2], a[3]),
                              syn.Obj(b[0], b[1], "small", b[2], b[3])))


def test_layout_targets_mirror_images_differ_and_lone_objects_are_centred() -> None:
    left = _scene(("circle", "red", 0.2, 0.5), ("square", "blue", 0.8, 0.5))
    right = _scene(("circle", "red", 0.8, 0.5), ("square", "blue", 0.2, 0.5))
    lone = syn.Scene("teal", (syn.Obj("star", "green", "large", 0.3, 0.7),))
    t = layout_targets([left, right, lone]).view(3, len(LAYOUT_SLOTS), 2)
    red, square = _slot("color", "red"), _slot("shape", "square")
    assert t[0, red, 0] == pytest.approx(-0.6) and t[0, square, 0] == pytest.approx(0.6)
    assert t[1, red, 0] == pytest.approx(0.6) and t[1, square, 0] == pytest.approx(-0.6)
    assert torch.all(t[:, :, 1].abs() < 1e-6)  # same height: no vertical offset
    assert torch.count_nonzero(t[2]) == 0  # one object sits at its own centre of mass
    assert torch.count_nonzero(t[0]) == 4  # red, blue, circle, square; nothing else


def test_claim_layout_agrees_with_the_scene_it_is_true_of() -> None:
    scene = _scene(("circle", "red", 0.2, 0.5), ("square", "blue", 0.8, 0.5))
    stated = syn.Claim((syn.ObjDesc("circle", "red"), syn.ObjDesc("square", "blue")), "left of")
    mirrored = syn.Claim((syn.ObjDesc("square", "blue"), syn.ObjDesc("circle", "red")), "right of")
    swapped = syn.Claim((syn.ObjDesc("circle", "red"), syn.ObjDesc("square", "blue")), "right of")
    no_rel = syn.Claim((syn.ObjDesc("circle", "red"), syn.ObjDesc("square")), None)
    (t, m) = claim_layout([stated, mirrored, swapped, no_rel])
    truth = layout_targets([scene])[0]
    # the same meaning in either word order gives the same target, whose signs match the scene
    assert torch.equal(t[0], t[1]) and torch.equal(m[0], m[1])
    assert m[0].sum() == 8  # x and y of red, circle, blue, square
    assert torch.equal(torch.sign(t[0]) * m[0], torch.sign(truth) * m[0])
    assert torch.equal(t[2], -t[0])  # the relation-swapped twin states the opposite layout
    assert m[3].sum() == 0  # nothing stated without a relation


def test_shared_attributes_are_not_supervised() -> None:
    same_shape = syn.Claim((syn.ObjDesc("circle", "red"), syn.ObjDesc("circle", "blue")), "above")
    t, m = claim_layout([same_shape])
    circle = _slot("shape", "circle")
    assert m.view(len(LAYOUT_SLOTS), 2)[circle].sum() == 0
    assert t.view(len(LAYOUT_SLOTS), 2)[_slot("color", "red"), 1] == pytest.approx(-0.5)


def test_patch_coordinates_span_the_grid_and_reject_non_square_grids() -> None:
    xy = PatchCoords(64, 16).xy[0]
    assert xy.shape == (64, 2)
    assert xy[0].tolist() == pytest.approx([-0.875, -0.875])  # top-left patch centre
    assert xy[-1].tolist() == pytest.approx([0.875, 0.875])
    assert xy[1, 0] > xy[0, 0] and xy[8, 1] > xy[0, 1]  # x grows rightwards, y downwards
    with pytest.raises(ValueError, match="square"):
        PatchCoords(50, 16)


def test_heads_with_coordinates_see_where_a_patch_is() -> None:
    torch.manual_seed(0)
    cfg = FusionConfig(32, 24, 16, width=32, heads=4, depth=1, image_tokens=16, coords=True)
    heads = FusionHeads(cfg, ("attention", "cross1")).eval()
    tokens = torch.zeros(2, 16, 24)
    tokens[0, 0] = tokens[1, 15] = 5.0  # the same patch content in opposite corners
    b = Batch(tokens, torch.zeros(2, 16), torch.randn(1, 5, 32).expand(2, -1, -1),
              torch.zeros(2, 5, dtype=torch.bool), torch.tensor([4, 4]), torch.zeros(2, 16))
    for kind in ("attention", "cross1"):
        s = heads.score(kind, b)
        assert not torch.isclose(s[0], s[1]), kind
    # the buffer is not saved: checkpoints keep only the learned projection
    assert not any(k.endswith(".xy") for k in heads.state_dict())
