"""Tests for the procedural shapes world (models/synthetic/)."""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import synthetic as S

SIZE_WORDS = {"small": {"small", "little", "tiny"}, "large": {"large", "big"}}
ALL_SIZE_WORDS = SIZE_WORDS["small"] | SIZE_WORDS["large"]
REL_PATTERN = re.compile(r"\b(left|right|above|over|on top of|below|under|beneath)\b")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text)


@pytest.fixture(scope="module")
def split_examples() -> dict[str, list[S.Example]]:
    return {split: S.examples(split, 500, size=32) for split in S.SPLIT_SEEDS}


@pytest.fixture(scope="module")
def many_captions() -> list[tuple[str, str, S.Claim, S.Scene]]:
    rng = np.random.default_rng(123)
    out = []
    for _ in range(2000):
        scene = S.sample_scene(rng, exclude_pairs=S.HELDOUT_PAIRS)
        claim = S.describe(scene, rng)
        text, template = S.phrase(claim, rng)
        out.append((text, template, claim, scene))
    return out


# ---- vocabulary and data types -------------------------------------------------------------


def test_vocabulary() -> None:
    assert S.SHAPES == ("circle", "square", "triangle", "star", "cross")
    assert S.COLORS == ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
    assert S.SIZES == ("small", "large")
    assert S.RELATIONS == ("left of", "right of", "above", "below")
    assert S.BACKGROUNDS == ("gray", "beige", "teal", "navy")
    assert len(S.HELDOUT_PAIRS) == 6
    assert {c for c, _ in S.HELDOUT_PAIRS} <= set(S.COLORS)
    assert {s for _, s in S.HELDOUT_PAIRS} == set(S.SHAPES)
    assert len({c for c, _ in S.HELDOUT_PAIRS}) == 6


def test_relation_and_key() -> None:
    a = S.Obj("circle", "red", "small", 0.2, 0.5)
    b = S.Obj("square", "blue", "large", 0.7, 0.55)
    ab = S.Scene("gray", (a, b))
    ba = S.Scene("gray", (b, a))
    assert ab.relation == "left of"
    assert ba.relation == "right of"
    assert ab.key() == ba.key()
    moved = S.Scene("gray", (S.Obj("circle", "red", "small", 0.5, 0.2), b))
    assert moved.relation == "above"
    assert moved.key() != ab.key()
    assert S.Scene("gray", (a,)).relation is None
    with pytest.raises(ValueError):
        S.Scene("gray", ())
    with pytest.raises(ValueError):
        S.Obj("hexagon", "red", "small", 0.5, 0.5)


def test_claim_true_semantics() -> None:
    a = S.Obj("circle", "red", "small", 0.2, 0.5)
    b = S.Obj("square", "blue", "large", 0.7, 0.5)
    scene = S.Scene("teal", (a, b))
    D = S.ObjDesc
    assert S.claim_true(S.Claim((D("circle"),)), scene)
    assert S.claim_true(S.Claim((D("square", "blue", "large"),), None, "teal"), scene)
    assert not S.claim_true(S.Claim((D("square", "blue", "large"),), None, "navy"), scene)
    assert not S.claim_true(S.Claim((D("circle", "blue"),)), scene)
    assert S.claim_true(S.Claim((D("circle", "red"), D("square")), "left of"), scene)
    assert S.claim_true(S.Claim((D("square"), D("circle")), "right of"), scene)
    assert not S.claim_true(S.Claim((D("circle"), D("square")), "right of"), scene)
    assert S.claim_true(S.Claim((D("square"), D("circle")), None), scene)
    # Two descriptions need two distinct objects.
    single = S.Scene("teal", (a,))
    assert not S.claim_true(S.Claim((D("circle"), D("circle")), None), single)


# ---- determinism ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", list(S.SPLIT_SEEDS))
def test_determinism(split: str) -> None:
    e1, e2 = S.example(split, 17), S.example(split, 17)
    assert e1.caption == e2.caption and e1.scene == e2.scene and e1.claim == e2.claim
    assert np.array_equal(np.asarray(e1.image), np.asarray(e2.image))
    other = S.example(split, 18)
    assert other.scene != e1.scene
    assert not np.array_equal(np.asarray(other.image), np.asarray(e1.image))
    # Index-addressable: examples() agrees with example().
    assert S.examples(split, 3, start=16)[1].caption == e1.caption
    t1, t2 = S.triplet(split, 5), S.triplet(split, 5)
    assert t1[1] == t2[1] and t1[3] == t2[3] and t1[4] == t2[4] and t1[5] == t2[5]
    assert np.array_equal(np.asarray(t1[0]), np.asarray(t2[0]))
    assert np.array_equal(np.asarray(t1[2]), np.asarray(t2[2]))


def test_splits_differ() -> None:
    assert S.example("train", 0).scene != S.example("val", 0).scene
    with pytest.raises(ValueError):
        S.example("nope", 0)


# ---- captions ------------------------------------------------------------------------------


def test_captions_true(split_examples: dict[str, list[S.Example]]) -> None:
    for exs in split_examples.values():
        for ex in exs:
            assert S.claim_true(ex.claim, ex.scene), (ex.caption, ex.scene)
            assert ex.caption == ex.caption.lower()
            assert ex.image.size == (32, 32) and ex.image.mode == "RGB"


def test_text_says_exactly_the_claim(
    many_captions: list[tuple[str, str, S.Claim, S.Scene]],
) -> None:
    for text, _, claim, _ in many_captions:
        words = _words(text)
        ws = set(words)
        assert ws & set(S.COLORS) == {d.color for d in claim.objects if d.color}, text
        assert ws & set(S.SHAPES) == {d.shape for d in claim.objects}, text
        sizes = {d.size for d in claim.objects if d.size}
        assert bool(ws & ALL_SIZE_WORDS) == bool(sizes), text
        for sz in sizes:
            assert ws & SIZE_WORDS[sz], text
        assert (ws & set(S.BACKGROUNDS)) == ({claim.background} - {None}), text
        assert bool(REL_PATTERN.search(text)) == (claim.relation is not None), text
        assert not re.search(r"\ba [aeiou]", text) and not re.search(r"\ban [^aeiou ]", text)


def test_template_variety(many_captions: list[tuple[str, str, S.Claim, S.Scene]]) -> None:
    templates = Counter(t for _, t, _, _ in many_captions)
    bodies = {t.split("+")[0] for t in templates}
    assert len(bodies) >= 15
    assert len(templates) >= 30
    texts = [t for t, _, _, _ in many_captions]
    assert len(set(texts)) > 1500
    joined = " | ".join(texts)
    for phrase in (
        " big ",
        " little ",
        " tiny ",
        "to the left of",
        "on the left of",
        "to the right of",
        " over ",
        "on top of",
        " under ",
        "beneath",
        " and ",
        "background",
        ", small",
        "an orange",
    ):
        assert phrase in joined, phrase
    # Inverted phrasing: the text names objects[1] first with the inverse relation.
    assert any(t.startswith("rel_inv") for t in templates)


def test_describe_proportions(many_captions: list[tuple[str, str, S.Claim, S.Scene]]) -> None:
    one = [c for _, _, c, s in many_captions if len(s.objects) == 1]
    two = [c for _, _, c, s in many_captions if len(s.objects) == 2]
    assert 0.8 < np.mean([c.objects[0].color is not None for c in one]) < 0.97
    assert 0.45 < np.mean([c.objects[0].size is not None for c in one]) < 0.75
    assert 0.6 < np.mean([c.relation is not None for c in two]) < 0.85
    assert any(len(c.objects) == 2 and c.relation is None for c in two)
    assert any(len(c.objects) == 1 for c in two)


def test_relation_matches_positions(split_examples: dict[str, list[S.Example]]) -> None:
    n = 0
    for ex in split_examples["train"]:
        claim = S.full_claim(ex.scene)
        if claim.relation is None:
            continue
        a, b = ex.scene.objects
        dx, dy = a.x - b.x, a.y - b.y
        assert max(abs(dx), abs(dy)) >= 0.3
        assert min(abs(dx), abs(dy)) <= 0.5 * max(abs(dx), abs(dy))
        assert math.hypot(dx, dy) > 0.2
        expected = {
            "left of": dx < 0 and abs(dx) > abs(dy),
            "right of": dx > 0 and abs(dx) > abs(dy),
            "above": dy < 0 and abs(dy) > abs(dx),
            "below": dy > 0 and abs(dy) > abs(dx),
        }
        assert expected[claim.relation]
        n += 1
    assert n > 150


def test_full_claim_caption_relation_words() -> None:
    a = S.Obj("star", "blue", "large", 0.25, 0.5)
    b = S.Obj("square", "green", "small", 0.75, 0.5)
    scene = S.Scene("beige", (a, b))
    claim = S.full_claim(scene)
    assert claim.relation == "left of" and claim.background == "beige"
    rng = np.random.default_rng(0)
    for _ in range(100):
        text, template = S.phrase(claim, rng)
        i_star, i_square = text.index("star"), text.index("square")
        if template.startswith("rel_inv") or template.startswith("rel_front"):
            # "a green square is right of a big blue star"
            assert i_square < i_star
            if template.startswith("rel_inv"):
                assert "right" in text
        else:
            assert i_star < i_square and "left" in text


# ---- hard negatives ------------------------------------------------------------------------


def test_negatives_false(split_examples: dict[str, list[S.Example]]) -> None:
    n_attr = n_rel = 0
    rng = np.random.default_rng(5)
    for ex in split_examples["train"] + split_examples["heldout"]:
        for claim in (ex.claim, S.full_claim(ex.scene)):
            neg = S.swap_attributes(claim, ex.scene)
            if neg is not None:
                assert not S.claim_true(neg, ex.scene)
                assert neg.relation == claim.relation
                n_attr += 1
            neg_r = S.swap_attributes(claim, ex.scene, rng)
            assert neg_r is None or not S.claim_true(neg_r, ex.scene)
            rel = S.swap_relation(claim, ex.scene)
            if rel is not None:
                assert not S.claim_true(rel, ex.scene)
                assert rel.relation == S.inverse_relation(claim.relation or "")
                n_rel += 1
            if claim.relation is None:
                assert rel is None
    assert n_attr > 500 and n_rel > 300
    # Full claims of two-object scenes always have both negatives (pairs differ).
    for ex in split_examples["train"]:
        if len(ex.scene.objects) == 2:
            assert S.swap_relation(S.full_claim(ex.scene), ex.scene) is not None


def test_swap_attributes_example() -> None:
    D = S.ObjDesc
    a = S.Obj("circle", "red", "small", 0.2, 0.5)
    b = S.Obj("square", "blue", "small", 0.7, 0.5)
    scene = S.Scene("gray", (a, b))
    claim = S.Claim((D("circle", "red"), D("square", "blue")), "left of")
    assert S.swap_attributes(claim, scene) == S.Claim(
        (D("circle", "blue"), D("square", "red")), "left of"
    )
    assert S.swap_relation(claim, scene) == S.Claim(
        (D("circle", "red"), D("square", "blue")), "right of"
    )
    # No colours, equal sizes: nothing to swap.
    assert S.swap_attributes(S.Claim((D("circle"), D("square")), "left of"), scene) is None
    one = S.swap_attributes(S.Claim((D("circle", "red"),)), scene)
    assert one is not None and one.objects[0].color not in {"red", "blue"}


# ---- held-out pairs ------------------------------------------------------------------------


def test_heldout_pairs(split_examples: dict[str, list[S.Example]]) -> None:
    for split in ("train", "val", "test"):
        for ex in split_examples[split]:
            assert not any(o.pair in S.HELDOUT_PAIRS for o in ex.scene.objects)
        for i in range(150):
            _, _, _, ref, target, _ = S.triplet(split, i, size=16)
            for sc in (ref, target):
                assert not any(o.pair in S.HELDOUT_PAIRS for o in sc.objects)
    for ex in split_examples["heldout"]:
        assert any(o.pair in S.HELDOUT_PAIRS for o in ex.scene.objects)
    seen = {o.pair for ex in split_examples["heldout"] for o in ex.scene.objects}
    assert S.HELDOUT_PAIRS <= seen
    for i in range(50):
        _, _, _, ref, target, _ = S.triplet("heldout", i, size=16)
        assert any(o.pair in S.HELDOUT_PAIRS for sc in (ref, target) for o in sc.objects)


def test_sample_scene_constraints() -> None:
    rng = np.random.default_rng(9)
    for _ in range(300):
        sc = S.sample_scene(rng, n_objects=2)
        a, b = sc.objects
        assert a.pair != b.pair
        for o in sc.objects:
            r = 0.62 * S.SCALE_RANGE[o.size][1]
            assert r <= o.x <= 1 - r and r <= o.y <= 1 - r
    counts = Counter(len(S.sample_scene(rng).objects) for _ in range(400))
    assert 150 < counts[1] < 250
    only_red_circle = frozenset((c, s) for c in S.COLORS for s in S.SHAPES) - {("red", "circle")}
    sc = S.sample_scene(rng, n_objects=1, exclude_pairs=only_red_circle)
    assert sc.objects[0].pair == ("red", "circle")


# ---- composed triplets ---------------------------------------------------------------------

_KIND_WORDS = {
    "resize": {"bigger", "larger", "enlarge", "smaller", "shrink"} | ALL_SIZE_WORDS,
    "move": {"left", "right", "above", "over", "top", "below", "under", "beneath"},
}


def test_compose_triplets() -> None:
    rng = np.random.default_rng(11)
    kinds: Counter[str] = Counter()
    phrasings: set[str] = set()
    for _ in range(600):
        scene = S.sample_scene(rng, exclude_pairs=S.HELDOUT_PAIRS)
        ref, text, target, kind = S.compose_triplet(scene, rng, exclude_pairs=S.HELDOUT_PAIRS)
        kinds[kind] += 1
        phrasings.add(" ".join(w for w in _words(text)[:2]))
        assert ref is scene
        assert target.key() != ref.key()
        assert target.background == ref.background
        assert not any(o.pair in S.HELDOUT_PAIRS for o in target.objects)
        words = set(_words(text))
        if kind == "recolour":
            changed = {o.attrs for o in target.objects} - {o.attrs for o in ref.objects}
            assert len(changed) == 1, text
            assert next(iter(changed))[1] in words, text
        elif kind == "reshape":
            changed = {o.attrs for o in target.objects} - {o.attrs for o in ref.objects}
            assert len(changed) == 1, text
            assert next(iter(changed))[0] in words, text
        elif kind == "add":
            assert len(ref.objects) == 1 and len(target.objects) == 2
            (added,) = [o for o in target.objects if o.attrs != ref.objects[0].attrs]
            assert {added.color, added.shape} <= words, text
            assert S.claim_true(S.Claim((S.ObjDesc(*ref.objects[0].attrs),)), target)
        elif kind == "remove":
            assert len(ref.objects) == 2 and len(target.objects) == 1
            assert words & {o.shape for o in ref.objects}, text
        elif kind == "move":
            assert len(target.objects) == 2 and target.relation is not None
            assert {o.attrs for o in target.objects} == {o.attrs for o in ref.objects}
            assert words & _KIND_WORDS["move"], text
        else:
            assert words & _KIND_WORDS["resize"], text
        if len(target.objects) == 2:
            a, b = target.objects
            dom = max(abs(a.x - b.x), abs(a.y - b.y))
            assert dom >= 0.3 and min(abs(a.x - b.x), abs(a.y - b.y)) <= 0.5 * dom
    assert set(kinds) == set(S.COMPOSE_KINDS)
    assert len(phrasings) >= 8


def test_compose_move_relation() -> None:
    rng = np.random.default_rng(3)
    a = S.Obj("circle", "red", "small", 0.2, 0.5)
    b = S.Obj("circle", "blue", "small", 0.7, 0.5)
    scene = S.Scene("gray", (a, b))
    for _ in range(20):
        _, text, target, kind = S.compose_triplet(scene, rng, kind="move")
        assert kind == "move"
        # Same shape: the text must name the colours to be unambiguous.
        assert "red circle" in text and "blue circle" in text
        red = next(o for o in target.objects if o.color == "red")
        blue = next(o for o in target.objects if o.color == "blue")
        first_red = text.index("red") < text.index("blue")
        mover, anchor = (red, blue) if first_red else (blue, red)
        rel = next(r for r in S.RELATIONS if r.split()[0] in text or _synonym(r, text))
        assert S.Scene("gray", (mover, anchor)).relation == rel
    with pytest.raises(ValueError):
        S.compose_triplet(S.Scene("gray", (a,)), rng, kind="move")


def _synonym(rel: str, text: str) -> bool:
    syn = {"above": ("over", "on top of"), "below": ("under", "beneath")}
    return any(f" {w} " in text for w in syn.get(rel, ()))


# ---- rendering -----------------------------------------------------------------------------


def test_contrast() -> None:
    worst = S.COLOR_JITTER + S.BACKGROUND_JITTER
    for (c, crgb), (b, brgb) in itertools.product(S.COLOR_RGB.items(), S.BACKGROUND_RGB.items()):
        dist = math.dist(crgb, brgb)
        assert dist >= 60 + worst * math.sqrt(3), (c, b, dist)
    for (c1, r1), (c2, r2) in itertools.combinations(S.COLOR_RGB.items(), 2):
        assert math.dist(r1, r2) >= 80, (c1, c2)


@pytest.mark.parametrize("color", S.COLORS)
def test_object_colour_present(color: str) -> None:
    rng = np.random.default_rng(0)
    for shape in S.SHAPES:
        for bg in S.BACKGROUNDS:
            size = S.SIZES[int(rng.integers(2))]
            obj = S.Obj(shape, color, size, 0.4, 0.6)
            img = S.render(S.Scene(bg, (obj,)), 64, rng)
            arr = np.asarray(img).astype(float)
            cy, cx = int(0.6 * 64), int(0.4 * 64)
            centre = arr[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(axis=0)
            assert math.dist(centre, S.COLOR_RGB[color]) < 40, (color, shape, bg, centre)
            corner = arr[1, 1]
            assert math.dist(corner, S.BACKGROUND_RGB[bg]) < 15


def test_render_size_and_canonical() -> None:
    scene = S.Scene("navy", (S.Obj("star", "black", "large", 0.5, 0.5),))
    img = S.render(scene)
    assert img.size == (64, 64) and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), np.asarray(S.render(scene)))
    assert S.render(scene, 128).size == (128, 128)


# ---- dataset files -------------------------------------------------------------------------


def test_write_dataset(tmp_path: Path) -> None:
    tsv = S.write_dataset(tmp_path / "ds", 40, split="val", seed_offset=10)
    assert tsv == tmp_path / "ds" / "captions.tsv"
    with tsv.open(encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0] == ["filepath", "title"]
    assert len(rows) == 41
    assert rows[1][0] == "scene_00000.png"
    assert rows[1][1] == S.example("val", 10).caption
    for name, title in rows[1:]:
        with Image.open(tsv.parent / name) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
        assert title and "\t" not in title
    first = np.asarray(Image.open(tsv.parent / "scene_00000.png"))
    assert np.array_equal(first, np.asarray(S.example("val", 10).image))
