"""The out-of-distribution world: its images show what its claims say, its held-out phrasings
say exactly their claims, and its splits are deterministic and apart."""

from __future__ import annotations

import colorsys
import itertools
from collections import Counter

import numpy as np
import pytest
from claim_parser import ClaimParser, canonical

from models import synthetic as syn
from models.synthetic import ood
from models.synthetic.ood_phrasing import phrase_ood, typo
from models.synthetic.ood_render import OOD_DIAMETER, draw


def _colour_name(rgb: np.ndarray) -> str:
    """Read a colour name off a pixel, by thresholds of this test's own (HSV)."""
    h, s, v = colorsys.rgb_to_hsv(*(rgb / 255.0))
    if v < 0.3:
        return "black"
    if s < 0.15:
        return "white" if v > 0.8 else "gray"
    hue = h * 360
    for name, (lo, hi) in {"red": (-20, 14), "orange": (14, 42), "yellow": (42, 75),
                           "green": (75, 165), "blue": (195, 250),
                           "purple": (250, 320)}.items():
        if lo <= hue < hi or lo <= hue - 360 < hi:
            return name
    return "other"


def _scenes(n: int, seed: int = 5) -> list[ood.OodScene]:
    rng = np.random.default_rng(seed)
    return [ood.sample_ood_scene(rng) for _ in range(n)]


def test_objects_sit_where_the_scene_says_and_relations_follow_their_centres() -> None:
    rng = np.random.default_rng(0)
    checked: Counter[str | None] = Counter()
    for s in _scenes(150):
        drawn = draw(s.scene, s.radii, rng, clean=True)
        side = drawn.crop[2] - drawn.crop[0]
        centroids = []
        for obj, mask in zip(s.scene.objects, drawn.masks, strict=True):
            ys, xs = np.nonzero(mask)
            assert len(xs) > 0, "every object is visible in the model's crop"
            cx, cy = (xs.mean() + 0.5) / side, (ys.mean() + 0.5) / side
            assert abs(cx - obj.x) < 0.06 and abs(cy - obj.y) < 0.06
            # nothing is cut off by the crop: no mask pixel on the visible square's border
            assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
            reach = 2 * np.hypot(xs + 0.5 - cx * side, ys + 0.5 - cy * side).max() / side
            lo, hi = OOD_DIAMETER[obj.size]
            assert lo - 3 / side <= reach <= hi + 3 / side, (obj.size, reach)
            centroids.append(syn.Obj(obj.shape, obj.color, obj.size, cx, cy))
        if len(centroids) == 2:
            # the relation a reader sees (drawn centroids) is the relation the claims use
            seen = syn.Scene(s.scene.background, tuple(centroids)).relation
            assert seen == s.scene.relation
            checked[seen] += 1
    assert set(checked) == set(syn.RELATIONS)


def test_objects_and_backgrounds_have_the_colours_they_are_named() -> None:
    rng = np.random.default_rng(1)
    right = total = 0
    for s in _scenes(120, seed=9):
        drawn = draw(s.scene, s.radii, rng, clean=True)
        vis = np.asarray(drawn.image)[drawn.crop[1]:drawn.crop[3], drawn.crop[0]:drawn.crop[2]]
        for obj, mask in zip(s.scene.objects, drawn.masks, strict=True):
            pixel = np.median(vis[mask].astype(np.float64), axis=0)
            right += _colour_name(pixel) == obj.color
            total += 1
        free = ~np.any(np.stack(drawn.masks), axis=0)
        bg = np.median(vis[free].astype(np.float64), axis=0)
        named = {"gray": "gray", "beige": "orange", "teal": "other", "navy": "blue"}
        # beige reads as a pale orange, teal as a blue-green between this test's bins
        h = colorsys.rgb_to_hsv(*(bg / 255.0))[0] * 360
        assert _colour_name(bg) == named[s.scene.background] or (
            s.scene.background == "teal" and 165 <= h < 195) or (
            s.scene.background == "beige" and 25 <= h <= 55)
    assert right / total >= 0.97, right / total  # shading and rims may move a median a little


def test_degraded_renders_differ_from_clean_and_keep_their_canvas_shapes() -> None:
    sizes = set()
    for i in range(40):
        ex = ood.ood_example("ood-val", i)
        sizes.add(ex.image.size)
        w, h = ex.image.size
        assert 48 <= min(w, h) <= 160 and max(w, h) / min(w, h) <= 1.5 + 1e-9
    assert len(sizes) > 30  # canvases of many sizes and aspect ratios
    assert any(w != h for w, h in sizes)


def test_splits_are_deterministic_and_apart() -> None:
    a, b = ood.ood_example("ood-test", 7), ood.ood_example("ood-test", 7)
    assert a.caption == b.caption and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    val = {ood.ood_example("ood-val", i).caption for i in range(60)}
    test = {ood.ood_example("ood-test", i).caption for i in range(60)}
    assert len(val & test) < 10  # a few short captions ("a red circle") may coincide
    pairs = {o.pair for i in range(200) for o in ood.ood_example("ood-test", i).scene.objects}
    assert not pairs & syn.HELDOUT_PAIRS
    held = [ood.ood_example("ood-heldout", i).scene for i in range(50)]
    assert all(any(o.pair in syn.HELDOUT_PAIRS for o in s.objects) for s in held)
    with pytest.raises(ValueError):
        ood.ood_example("test", 0)


def test_every_query_is_true_of_its_image_and_half_are_worded_the_held_out_way() -> None:
    exs = ood.ood_examples("ood-test", 200)
    assert all(syn.claim_true(e.claim, e.scene) for e in exs)
    assert sum(e.heldout_phrasing for e in exs) == 100


def test_triplets_change_exactly_what_their_text_asks() -> None:
    kinds: Counter[str] = Counter()
    for i in range(120):
        ref_img, text, tgt_img, ref, tgt, kind = ood.ood_triplet("ood-test", i)
        kinds[kind] += 1
        assert ref.key() != tgt.key() and ref.background == tgt.background
        if kind in ("recolour", "reshape", "resize"):
            changed = [(a, b) for a, b in zip(ref.objects, tgt.objects, strict=True)
                       if a.attrs != b.attrs]
            assert len(changed) == 1
            (a, b), = changed
            field = {"recolour": "color", "reshape": "shape", "resize": "size"}[kind]
            assert [f for f in ("shape", "color", "size")
                    if getattr(a, f) != getattr(b, f)] == [field]
        elif kind == "add":
            assert len(tgt.objects) == len(ref.objects) + 1
        elif kind == "remove":
            assert len(tgt.objects) == len(ref.objects) - 1
        else:
            assert {o.attrs for o in ref.objects} == {o.attrs for o in tgt.objects}
            assert ref.relation != tgt.relation
    assert set(kinds) == set(syn.COMPOSE_KINDS)


@pytest.fixture(scope="module")
def parser() -> ClaimParser:
    rng = np.random.default_rng(99)
    clean = []
    for i in range(3000):
        ex = syn.example("train", i, size=8)
        claim = ex.claim
        clean.append(ex.caption)
        clean.append(phrase_ood(claim, rng, p_typo=0.0)[0])
    return ClaimParser(clean)


def test_training_phrasings_parse_to_their_claims(parser: ClaimParser) -> None:
    for i in range(400):
        ex = syn.example("test", i, size=8)
        assert canonical(parser.parse(ex.caption)) == canonical(ex.claim), ex.caption


def test_held_out_phrasings_parse_to_the_same_claims(parser: ClaimParser) -> None:
    rng = np.random.default_rng(3)
    forms: Counter[str] = Counter()
    for i in range(800):
        ex = syn.example("val", i, size=8)
        claims = [ex.claim, syn.full_claim(ex.scene)]
        for claim in claims:
            text, form = phrase_ood(claim, rng)
            forms[form.split("/")[0]] += 1
            assert canonical(parser.parse(text)) == canonical(claim), (text, claim)
    assert len(forms) >= 20  # one-object, relational and plain two-object forms all occur


def test_no_held_out_caption_is_a_training_caption(parser: ClaimParser) -> None:
    rng = np.random.default_rng(4)
    train_rng = np.random.default_rng(5)
    training = set()
    for claim in (syn.example("val", i, size=8).claim for i in range(600)):
        for _ in range(20):
            training.add(syn.caption_text(claim, train_rng))
    held = [phrase_ood(syn.example("val", i, size=8).claim, rng)[0] for i in range(600)]
    assert sum(t in training for t in held) <= 6  # bare "red circle"-like forms may coincide


def test_typos_change_one_long_word_by_one_edit() -> None:
    rng = np.random.default_rng(8)
    for text in ("a purple triangle above a yellow square", "the image shows a big cross"):
        for _ in range(50):
            out = typo(text, rng)
            diff = [(a, b) for a, b in itertools.zip_longest(text.split(), out.split())
                    if a != b]
            assert len(diff) <= 1
            if diff:
                (a, b), = diff
                assert a is not None and b is not None and len(a) >= 5
                assert abs(len(a) - len(b)) <= 1
