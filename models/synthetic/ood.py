"""Out-of-distribution splits: free placement, the OOD renderer and held-out phrasings.

Nothing is trained or tuned on these. ``ood-val`` is for choices made after training (the
temperature of the match head); ``ood-test`` is only ever reported; ``ood-heldout`` draws the
held-out colour-shape pairs. Scenes are placed freely: any centres that keep the objects inside
the visible square and apart, the relation decided by the centres (the dominant axis of their
offset, as :func:`.world.claim_true` reads it), placements whose two axes are within a factor of
1.3 of each other left out as ambiguous to a reader. Queries are worded half in the training
phrasings and half in the held-out ones, so each can be reported apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from .ood_phrasing import REL_WORDS, SHAPE_WORDS, SIZE_WORDS, _a, phrase_ood
from .ood_render import OOD_DIAMETER, draw
from .phrasing import describe, phrase
from .world import (
    BACKGROUNDS,
    COLORS,
    HELDOUT_PAIRS,
    RELATIONS,
    SHAPES,
    SIZES,
    Claim,
    Obj,
    Scene,
    _pick,
    _relation_between,
)

OOD_SPLIT_SEEDS: dict[str, int] = {"ood-val": 101, "ood-test": 102, "ood-heldout": 103}
#: the dominant axis of two centres' offset must exceed the other by this factor
DOMINANCE = 1.3
_GAP = 0.03  # between two objects' bounding circles, fraction of the visible square
_EDGE = 0.03  # between an object and the visible square's border
#: two objects' radii sum to at most this (diameters to 0.8 of the visible square), so free
#: placement has room; a lone object may span up to 0.56
PAIR_RADII = 0.4


@dataclass(frozen=True)
class OodScene:
    """A scene graph plus each object's bounding radius (fraction of the visible square)."""

    scene: Scene
    radii: tuple[float, ...]


@dataclass(frozen=True)
class OodExample:
    """One OOD image with its query: the claim, and its caption in both kinds of wording."""

    scene: Scene
    image: Image.Image
    claim: Claim
    caption: str  # the query used: familiar or held-out wording, as ``heldout_phrasing`` says
    heldout_phrasing: bool
    form: str


def _radius(size: str, rng: np.random.Generator, beside: float = 0.0) -> float:
    """A radius in ``size``'s range; with ``beside`` (another object's radius), one that leaves
    the pair room (:data:`PAIR_RADII`)."""
    lo, hi = OOD_DIAMETER[size]
    if beside:
        hi = min(hi, 2 * (PAIR_RADII - beside))
    return float(rng.uniform(lo, max(lo, hi))) / 2


def _fits(x: float, y: float, r: float) -> bool:
    return r + _EDGE <= x <= 1 - r - _EDGE and r + _EDGE <= y <= 1 - r - _EDGE


def _apart(a: Obj, ra: float, b: Obj, rb: float) -> bool:
    dx, dy = abs(a.x - b.x), abs(a.y - b.y)
    clear = math.hypot(dx, dy) >= ra + rb + _GAP
    return clear and max(dx, dy) >= DOMINANCE * min(dx, dy)


def _centre(r: float, rng: np.random.Generator) -> tuple[float, float]:
    lo, hi = r + _EDGE, 1 - r - _EDGE
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def place(objs: list[tuple[str, str, str]], radii: list[float], rng: np.random.Generator,
          relation: str | None = None, keep: Obj | None = None) -> tuple[Obj, ...]:
    """Free placement of one or two objects (shape, colour, size) with the given radii.

    With ``relation``, object 0 must stand in it to object 1; with ``keep``, object 1 keeps that
    object's position. Raises RuntimeError when no placement is found (never seen in practice).
    """
    for attempt in range(4000):
        pts = [_centre(r, rng) for r in radii]
        if keep is not None and attempt < 1000:  # then give up the kept position
            pts[1] = (keep.x, keep.y)
        placed = tuple(Obj(*o, *p) for o, p in zip(objs, pts, strict=True))
        if len(placed) == 1:
            return placed
        a, b = placed
        if not _apart(a, radii[0], b, radii[1]):
            continue
        if relation is None or _relation_between(a, b) == relation:
            return placed
    raise RuntimeError("no placement found")


def _pairs(heldout: bool) -> list[tuple[str, str]]:
    return [(c, s) for c in COLORS for s in SHAPES if ((c, s) in HELDOUT_PAIRS) == heldout]


def sample_ood_scene(rng: np.random.Generator, heldout: bool = False) -> OodScene:
    """One or two objects (45 / 55 %) freely placed; the first object's (colour, shape) pair is
    a held-out one exactly when ``heldout``, the second's never is, and the two pairs differ."""
    n = 1 if rng.random() < 0.45 else 2
    cands = _pairs(heldout)
    first = cands[int(rng.integers(len(cands)))]
    pairs = [first]
    if n == 2:
        rest = [p for p in _pairs(False) if p != first]
        pairs.append(rest[int(rng.integers(len(rest)))])
        if rng.random() < 0.5:
            pairs.reverse()
    attrs = [(s, c, _pick(rng, SIZES)) for c, s in pairs]
    # in a pair, the first leaves room for the largest minimum of the second
    radii = [_radius(attrs[0][2], rng, beside=OOD_DIAMETER["large"][0] / 2 if n == 2 else 0.0)]
    if n == 2:
        radii.append(_radius(attrs[1][2], rng, beside=radii[0]))
    objs = place(attrs, radii, rng)
    return OodScene(Scene(_pick(rng, BACKGROUNDS), objs), tuple(radii))


def render_ood(s: OodScene, rng: np.random.Generator) -> Image.Image:
    """The OOD renderer's image of ``s`` (its own canvas size; the model's preprocessing resizes
    it and crops the visible square)."""
    return draw(s.scene, s.radii, rng).image


def _seed(split: str) -> int:
    if split not in OOD_SPLIT_SEEDS:
        raise ValueError(f"unknown OOD split {split!r}; expected one of {sorted(OOD_SPLIT_SEEDS)}")
    return OOD_SPLIT_SEEDS[split]


def ood_example(split: str, i: int) -> OodExample:
    """The ``i``-th example of an OOD split, deterministic per index. Even-numbered queries are
    worded in the training phrasings, odd-numbered ones in the held-out phrasings."""
    rng = np.random.default_rng([_seed(split), i])
    s = sample_ood_scene(rng, heldout=split == "ood-heldout")
    claim = describe(s.scene, rng)
    heldout_phrasing = i % 2 == 1
    text, form = phrase_ood(claim, rng) if heldout_phrasing else phrase(claim, rng)
    return OodExample(s.scene, render_ood(s, rng), claim, text, heldout_phrasing, form)


def ood_examples(split: str, n: int, start: int = 0) -> list[OodExample]:
    return [ood_example(split, k) for k in range(start, start + n)]


# ---- composed triplets ------------------------------------------------------------------------


def _refer(scene: Scene, i: int, rng: np.random.Generator) -> str:
    o = scene.objects[i]
    others = [p for k, p in enumerate(scene.objects) if k != i]
    shape = _pick(rng, SHAPE_WORDS[o.shape])
    if all(p.shape != o.shape for p in others) and rng.random() < 0.6:
        return f"the {shape}"
    return f"the {o.color} {shape}"


def _swap_size(size: str) -> str:
    return "large" if size == "small" else "small"


def ood_triplet(split: str, i: int) -> tuple[Image.Image, str, Image.Image, Scene, Scene, str]:
    """``(reference image, modification text, target image, reference, target, kind)``.

    Kinds as in training (recolour, reshape, resize, add, remove, move), worded in held-out
    forms; both images drawn by the OOD renderer with independent styles and canvases. Kept
    objects keep their centres, so only the modification tells the two scenes apart.
    """
    rng = np.random.default_rng([_seed(split), i, 7])
    ref = sample_ood_scene(rng, heldout=split == "ood-heldout")
    sc = ref.scene
    objs, radii = list(sc.objects), list(ref.radii)
    kinds = ["recolour", "reshape", "resize"] + (["add"] if len(objs) == 1 else ["remove", "move"])
    kind = _pick(rng, kinds)
    j = int(rng.integers(len(objs)))
    o = objs[j]
    used = {p.pair for k, p in enumerate(objs) if k != j}
    allowed = set(_pairs(False)) | (set(_pairs(True)) if split == "ood-heldout" else set())
    if kind == "recolour":
        new = _pick(rng, [c for c in COLORS if c != o.color and (c, o.shape) in allowed
                          and (c, o.shape) not in used])
        text = _pick(rng, ("recolour {r} {c}", "{r} should be {c} now", "i want {r} in {c}",
                           "same picture, {r} coloured {c}")).format(r=_refer(sc, j, rng), c=new)
        objs[j] = replace(o, color=new)
    elif kind == "reshape":
        new = _pick(rng, [s for s in SHAPES if s != o.shape and (o.color, s) in allowed
                          and (o.color, s) not in used])
        word = _pick(rng, SHAPE_WORDS[new])
        text = _pick(rng, ("{r} becomes {a}", "same scene with {a} instead of {r}",
                           "exchange {r} for {a}")).format(r=_refer(sc, j, rng), a=_a(word))
        objs[j] = replace(o, shape=new)
    elif kind == "resize":
        new = _swap_size(o.size)
        word = _pick(rng, SIZE_WORDS[new])
        text = _pick(rng, ("{r} but {w}", "a {w} version of {r}", "{r} should be {w}")).format(
            r=_refer(sc, j, rng), w=word)
        objs[j] = replace(o, size=new)
        radii[j] = _radius(new, rng, beside=radii[1 - j] if len(objs) == 2 else 0.0)
    elif kind == "add":
        cands = [p for p in sorted(allowed) if p != o.pair]
        color, shape = cands[int(rng.integers(len(cands)))]
        size, rel = _pick(rng, SIZES), _pick(rng, RELATIONS)
        r_new = _radius(size, rng, beside=radii[0])
        new_obj, kept = place([(shape, color, size), o.attrs], [r_new, radii[0]], rng, rel,
                              keep=o)
        np_ = " ".join((_pick(rng, SIZE_WORDS[size]), color, _pick(rng, SHAPE_WORDS[shape])))
        text = f"also put {_a(np_)} {_pick(rng, REL_WORDS[rel])} {_refer(sc, 0, rng)}"
        objs, radii = [kept, new_obj], [radii[0], r_new]
    elif kind == "remove":
        text = _pick(rng, ("without {r}", "{r} is gone", "leave out {r}")).format(
            r=_refer(sc, j, rng))
        objs, radii = [objs[1 - j]], [radii[1 - j]]
    else:  # move: object j to another side of the other one
        k = 1 - j
        cur = _relation_between(objs[j], objs[k])
        rel = _pick(rng, [r for r in RELATIONS if r != cur])
        text = f"{_refer(sc, j, rng)} goes {_pick(rng, REL_WORDS[rel])} {_refer(sc, k, rng)}"
        objs[j], objs[k] = place([o.attrs, objs[k].attrs], [radii[j], radii[k]], rng, rel,
                                 keep=objs[k])
    if kind in ("recolour", "reshape", "resize") and len(objs) == 2 and not _apart(
            objs[0], radii[0], objs[1], radii[1]) or not all(
            _fits(p.x, p.y, r) for p, r in zip(objs, radii, strict=True)):
        rel2 = sc.relation
        objs = list(place([p.attrs for p in objs], radii, rng, rel2))
    target = OodScene(Scene(sc.background, tuple(objs)), tuple(radii))
    assert target.scene.key() != sc.key()
    return (render_ood(ref, rng), text, render_ood(target, rng), sc, target.scene, kind)
