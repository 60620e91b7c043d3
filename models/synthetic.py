"""A deterministic procedural world of shapes with true captions.

No image-caption data set can be downloaded here, so the bundled model is trained on scenes that
this module generates itself, deterministically from a seed (see the design's section "The
synthetic world"):

- RGB scenes (default 64x64) of one or two objects on a plain background;
- captions rendered from a structured :class:`Claim` in many phrasings, always true of the scene;
- hard negatives (attribute swaps and relation swaps) that are false of the scene;
- composed-retrieval triplets (reference, modification text, target);
- splits by seed, plus a held-out set of colour-shape pairs never seen in training.

Only numpy and Pillow are used.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_RGB",
    "COLORS",
    "COLOR_RGB",
    "COMPOSE_KINDS",
    "HELDOUT_PAIRS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPLIT_SEEDS",
    "Claim",
    "Example",
    "Obj",
    "ObjDesc",
    "Scene",
    "caption",
    "caption_text",
    "claim_true",
    "compose_triplet",
    "describe",
    "example",
    "examples",
    "full_claim",
    "inverse_relation",
    "phrase",
    "render",
    "sample_scene",
    "swap_attributes",
    "swap_relation",
    "triplet",
    "write_dataset",
]

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
SIZES: tuple[str, ...] = ("small", "large")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
BACKGROUNDS: tuple[str, ...] = ("gray", "beige", "teal", "navy")

#: (colour, shape) pairs that never occur in the train/val/test splits.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "star"),
        ("blue", "triangle"),
        ("green", "cross"),
        ("yellow", "square"),
        ("purple", "circle"),
        ("white", "cross"),
    }
)

COMPOSE_KINDS: tuple[str, ...] = ("recolour", "reshape", "resize", "add", "remove", "move")

SPLIT_SEEDS: dict[str, int] = {"train": 0, "val": 1, "test": 2, "heldout": 3}

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 20),
    "yellow": (250, 230, 30),
    "green": (30, 175, 50),
    "blue": (40, 80, 235),
    "purple": (150, 40, 190),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}

BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "beige": (190, 170, 130),
    "teal": (0, 110, 120),
    "navy": (25, 35, 120),
}

#: Rendered object width as a fraction of the image width, per size class.
SCALE_RANGE: dict[str, tuple[float, float]] = {"small": (0.16, 0.22), "large": (0.30, 0.38)}
#: Per-channel colour jitter (objects) and background jitter, in RGB units.
COLOR_JITTER = 12
BACKGROUND_JITTER = 6
MAX_ROTATION_DEG = 15.0

_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

# Every polygon fits in a circle of radius _R_FACTOR * scale around the object's centre.
_R_FACTOR = 0.62
_PAD = 0.01
_SUPERSAMPLE = 4

# --------------------------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    """One object: shape, colour, size class and centre in [0, 1] image coordinates (y down)."""

    shape: str
    color: str
    size: str
    x: float
    y: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.color not in COLORS or self.size not in SIZES:
            raise ValueError(f"unknown attribute in {self!r}")

    @property
    def attrs(self) -> tuple[str, str, str]:
        """The (shape, colour, size) triple."""
        return (self.shape, self.color, self.size)

    @property
    def pair(self) -> tuple[str, str]:
        """The (colour, shape) pair, as used by :data:`HELDOUT_PAIRS`."""
        return (self.color, self.shape)


def _relation_between(a: Obj, b: Obj) -> str:
    """The relation of ``a`` to ``b`` from their positions (dominant axis wins)."""
    dx = a.x - b.x
    dy = a.y - b.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def inverse_relation(relation: str) -> str:
    """``"left of"`` <-> ``"right of"``, ``"above"`` <-> ``"below"``."""
    return _INVERSE[relation]


SceneKey = tuple[str, tuple[tuple[str, str, str], ...], str | None]


@dataclass(frozen=True)
class Scene:
    """A background and one or two objects."""

    background: str
    objects: tuple[Obj, ...]

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}")
        if not 1 <= len(self.objects) <= 2:
            raise ValueError("a scene holds one or two objects")

    @property
    def relation(self) -> str | None:
        """For two objects, the relation of ``objects[0]`` to ``objects[1]``; else None."""
        if len(self.objects) != 2:
            return None
        return _relation_between(self.objects[0], self.objects[1])

    def key(self) -> SceneKey:
        """A canonical, hashable scene graph: equal keys mean "the same scene".

        Objects are ordered by (shape, colour, size) and the relation is expressed from the first
        to the second, so "A left of B" and "B right of A" give the same key. Positions enter
        only through the relation, as finely as captions describe them.
        """
        if len(self.objects) == 1:
            return (self.background, (self.objects[0].attrs,), None)
        a, b = self.objects
        rel = _relation_between(a, b)
        if a.attrs > b.attrs:
            a, b = b, a
            rel = _INVERSE[rel]
        return (self.background, (a.attrs, b.attrs), rel)


@dataclass(frozen=True)
class ObjDesc:
    """The description of one object in a caption; None means "not mentioned"."""

    shape: str
    color: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class Claim:
    """The structured meaning of a caption.

    ``relation`` is only set with two objects and means ``objects[0] relation objects[1]``.
    """

    objects: tuple[ObjDesc, ...]
    relation: str | None = None
    background: str | None = None


@dataclass(frozen=True)
class Example:
    """One captioned image."""

    scene: Scene
    image: Image.Image
    caption: str
    claim: Claim


# --------------------------------------------------------------------------------------------
# Truth
# --------------------------------------------------------------------------------------------


def _matches(desc: ObjDesc, obj: Obj) -> bool:
    return (
        desc.shape == obj.shape
        and (desc.color is None or desc.color == obj.color)
        and (desc.size is None or desc.size == obj.size)
    )


def claim_true(claim: Claim, scene: Scene) -> bool:
    """Whether ``claim`` is true of ``scene``.

    A one-object claim holds if any object matches; a two-object claim needs two distinct objects
    matching in some assignment for which the relation (when given) holds. The background must
    match when given.
    """
    if claim.background is not None and claim.background != scene.background:
        return False
    objs = scene.objects
    if len(claim.objects) == 1:
        return any(_matches(claim.objects[0], o) for o in objs)
    if len(claim.objects) != 2:
        return False
    d0, d1 = claim.objects
    for i, j in itertools.permutations(range(len(objs)), 2):
        if _matches(d0, objs[i]) and _matches(d1, objs[j]):
            if claim.relation is None or _relation_between(objs[i], objs[j]) == claim.relation:
                return True
    return False


def full_claim(scene: Scene) -> Claim:
    """The most specific claim of ``scene``: all attributes, the relation and the background."""
    descs = tuple(ObjDesc(o.shape, o.color, o.size) for o in scene.objects)
    return Claim(descs, scene.relation, scene.background)


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

_SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big"),
}
_REL_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "beneath"),
}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _with_article(phrase_: str) -> str:
    return f"{_article(phrase_)} {phrase_}"


def _size_word(size: str, rng: np.random.Generator) -> str:
    return _pick(rng, _SIZE_WORDS[size])


def _noun_phrase(
    desc: ObjDesc, rng: np.random.Generator, *, color: bool = True, size: bool = True
) -> str:
    words = []
    if size and desc.size is not None:
        words.append(_size_word(desc.size, rng))
    if color and desc.color is not None:
        words.append(desc.color)
    words.append(desc.shape)
    return " ".join(words)


def _body_one(name: str, d: ObjDesc, rng: np.random.Generator) -> str:
    if name == "np_a":
        return _with_article(_noun_phrase(d, rng))
    if name == "np_bare":
        return _noun_phrase(d, rng)
    if name == "np_comma_size":
        assert d.size is not None
        return f"{_noun_phrase(d, rng, size=False)}, {_size_word(d.size, rng)}"
    if name == "photo_of":
        return f"a photo of {_with_article(_noun_phrase(d, rng))}"
    if name == "image_of":
        return f"an image of {_with_article(_noun_phrase(d, rng))}"
    if name == "picture_of":
        return f"a picture of {_with_article(_noun_phrase(d, rng))}"
    if name == "there_is":
        return f"there is {_with_article(_noun_phrase(d, rng))}"
    if name == "that_is_color":
        return f"{_with_article(_noun_phrase(d, rng, color=False))} that is {d.color}"
    if name == "in_color":
        return f"{_with_article(_noun_phrase(d, rng, color=False))} in {d.color}"
    if name == "that_is_size":
        assert d.size is not None
        np_ = _with_article(_noun_phrase(d, rng, size=False))
        return f"{np_} that is {_size_word(d.size, rng)}"
    raise KeyError(name)


def _body_rel(name: str, d0: ObjDesc, d1: ObjDesc, rel: str, rng: np.random.Generator) -> str:
    a0 = _with_article(_noun_phrase(d0, rng))
    a1 = _with_article(_noun_phrase(d1, rng))
    r = _pick(rng, _REL_WORDS[rel])
    inv = _pick(rng, _REL_WORDS[_INVERSE[rel]])
    if name == "rel":
        return f"{a0} {r} {a1}"
    if name == "rel_is":
        return f"{a0} is {r} {a1}"
    if name == "rel_there":
        return f"there is {a0} {r} {a1}"
    if name == "rel_inv":
        return f"{a1} is {inv} {a0}"
    if name == "rel_inv_bare":
        return f"{a1} {inv} {a0}"
    if name == "rel_front":
        return f"{r} {a1}, there is {a0}"
    if name == "rel_photo":
        return f"a photo of {a0} {r} {a1}"
    if name == "rel_bare":
        return f"{_noun_phrase(d0, rng)} {r} {_noun_phrase(d1, rng)}"
    if name == "rel_the":
        return f"the {_noun_phrase(d0, rng)} is {r} the {_noun_phrase(d1, rng)}"
    raise KeyError(name)


def _body_and(name: str, d0: ObjDesc, d1: ObjDesc, rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        d0, d1 = d1, d0
    a0 = _with_article(_noun_phrase(d0, rng))
    a1 = _with_article(_noun_phrase(d1, rng))
    if name == "and":
        return f"{a0} and {a1}"
    if name == "and_there":
        return f"there is {a0} and {a1}"
    if name == "and_photo":
        return f"a photo of {a0} and {a1}"
    if name == "and_two":
        return f"two shapes: {a0} and {a1}"
    raise KeyError(name)


_ONE_BODIES = (
    "np_a",
    "np_bare",
    "np_comma_size",
    "photo_of",
    "image_of",
    "picture_of",
    "there_is",
    "that_is_color",
    "in_color",
    "that_is_size",
)
_REL_BODIES = (
    "rel",
    "rel_is",
    "rel_there",
    "rel_inv",
    "rel_inv_bare",
    "rel_front",
    "rel_photo",
    "rel_bare",
    "rel_the",
)
_AND_BODIES = ("and", "and_there", "and_photo", "and_two")
# Bodies that read as a plain noun phrase, so "a teal background with ..." fits them.
_NP_BODIES = frozenset({"np_a", "that_is_color", "in_color", "that_is_size", "rel", "and"})
_BG_WRAPPERS = ("pre", "post", "post_comma", "with")


def phrase(claim: Claim, rng: np.random.Generator) -> tuple[str, str]:
    """Render ``claim`` as text; returns ``(text, template_name)``.

    The text says exactly what the claim says (no attribute more, none less). The template name
    identifies the sentence frame (body plus background wrapper) and exists for tests and stats.
    """
    if len(claim.objects) == 1:
        d = claim.objects[0]
        bodies = [
            b
            for b in _ONE_BODIES
            if not (b in ("np_comma_size", "that_is_size") and d.size is None)
            and not (b in ("that_is_color", "in_color") and d.color is None)
        ]
        body = _pick(rng, bodies)
        text = _body_one(body, d, rng)
    elif len(claim.objects) == 2:
        d0, d1 = claim.objects
        if claim.relation is not None:
            body = _pick(rng, _REL_BODIES)
            text = _body_rel(body, d0, d1, claim.relation, rng)
        else:
            body = _pick(rng, _AND_BODIES)
            text = _body_and(body, d0, d1, rng)
    else:
        raise ValueError("a claim describes one or two objects")
    if claim.background is None:
        return text, body
    wrappers = [w for w in _BG_WRAPPERS if w != "with" or body in _NP_BODIES]
    wrapper = _pick(rng, wrappers)
    bg = claim.background
    if wrapper == "pre":
        text = f"on {_with_article(bg)} background, {text}"
    elif wrapper == "post":
        text = f"{text} on {_with_article(bg)} background"
    elif wrapper == "post_comma":
        text = f"{text}, {bg} background"
    else:
        text = f"{_with_article(bg)} background with {text}"
    return text, f"{body}+{wrapper}"


def caption_text(claim: Claim, rng: np.random.Generator) -> str:
    """Render ``claim`` as a lower-case caption in one of many phrasings."""
    return phrase(claim, rng)[0]


def _desc(obj: Obj, rng: np.random.Generator, p_color: float, p_size: float) -> ObjDesc:
    color = obj.color if rng.random() < p_color else None
    size = obj.size if rng.random() < p_size else None
    return ObjDesc(obj.shape, color, size)


def describe(scene: Scene, rng: np.random.Generator) -> Claim:
    """A random true claim of ``scene`` at varied specificity.

    One object: shape always, colour ~90%, size ~60%, background ~30%. Two objects: ~75% both
    objects with their relation, ~12% one object only, ~13% both objects without relation.
    """
    bg = scene.background if rng.random() < 0.3 else None
    if len(scene.objects) == 1:
        return Claim((_desc(scene.objects[0], rng, 0.9, 0.6),), None, bg)
    u = rng.random()
    if u < 0.12:
        obj = scene.objects[int(rng.integers(2))]
        return Claim((_desc(obj, rng, 0.9, 0.6),), None, bg)
    o0, o1 = scene.objects
    if rng.random() < 0.5:
        o0, o1 = o1, o0
    descs = (_desc(o0, rng, 0.9, 0.5), _desc(o1, rng, 0.9, 0.5))
    rel = _relation_between(o0, o1) if u < 0.87 else None
    claim = Claim(descs, rel, bg)
    assert claim_true(claim, scene)
    return claim


def caption(scene: Scene, rng: np.random.Generator) -> tuple[str, Claim]:
    """A random true caption of ``scene`` and the claim it was rendered from."""
    claim = describe(scene, rng)
    return caption_text(claim, rng), claim


# --------------------------------------------------------------------------------------------
# Hard negatives
# --------------------------------------------------------------------------------------------


def swap_attributes(
    claim: Claim, scene: Scene, rng: np.random.Generator | None = None
) -> Claim | None:
    """An attribute-swapped twin of ``claim`` that is false of ``scene``, or None.

    Two objects: swap the colours of the two descriptions (or their sizes when the colours are
    equal or absent). One object: give it a colour that no object in the scene has (picked with
    ``rng`` when given, else the next such colour in :data:`COLORS`).
    """
    candidates: list[Claim] = []
    if len(claim.objects) == 2:
        d0, d1 = claim.objects
        if d0.color is not None and d1.color is not None and d0.color != d1.color:
            candidates.append(
                replace(claim, objects=(replace(d0, color=d1.color), replace(d1, color=d0.color)))
            )
        if d0.size is not None and d1.size is not None and d0.size != d1.size:
            candidates.append(
                replace(claim, objects=(replace(d0, size=d1.size), replace(d1, size=d0.size)))
            )
    elif len(claim.objects) == 1:
        d = claim.objects[0]
        present = {o.color for o in scene.objects}
        free = [c for c in COLORS if c not in present]
        if free:
            if rng is not None:
                color = _pick(rng, free)
            else:
                start = COLORS.index(d.color) if d.color is not None else 0
                order = COLORS[start + 1 :] + COLORS[: start + 1]
                color = next(c for c in order if c in free)
            candidates.append(replace(claim, objects=(replace(d, color=color),)))
    for cand in candidates:
        if not claim_true(cand, scene):
            return cand
    return None


def swap_relation(claim: Claim, scene: Scene) -> Claim | None:
    """``claim`` with its relation reversed (left <-> right, above <-> below) if that is false of
    ``scene``; None for claims without a relation or when the reversal is still true."""
    if claim.relation is None or len(claim.objects) != 2:
        return None
    cand = replace(claim, relation=_INVERSE[claim.relation])
    return None if claim_true(cand, scene) else cand


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _radius(size: str) -> float:
    return _R_FACTOR * SCALE_RANGE[size][1]


def _margin(size: str) -> float:
    return _radius(size) + _PAD


def _place_one(size: str, rng: np.random.Generator) -> tuple[float, float]:
    m = _margin(size)
    return float(rng.uniform(m, 1 - m)), float(rng.uniform(m, 1 - m))


def _place_pair(
    size0: str, size1: str, relation: str, rng: np.random.Generator
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centres for two objects so that object 0 is unambiguously ``relation`` object 1.

    The offset along the relation's axis is at least 0.3 (and enough to keep the objects'
    bounding circles apart); the other offset is at most 0.4 of it.
    """
    m0, m1 = _margin(size0), _margin(size1)
    dmin = max(0.3, _radius(size0) + _radius(size1) + 0.02)
    dmax = 1 - m0 - m1
    d = float(rng.uniform(dmin, dmax))
    e = float(rng.uniform(-0.4 * d, 0.4 * d))
    # Along the axis: object 0 before (left/above) or after object 1.
    before = relation in ("left of", "above")
    if before:
        a0 = float(rng.uniform(m0, 1 - m1 - d))
        a1 = a0 + d
    else:
        a1 = float(rng.uniform(m1, 1 - m0 - d))
        a0 = a1 + d
    p0 = float(rng.uniform(max(m0, m1 - e), min(1 - m0, 1 - m1 - e)))
    p1 = p0 + e
    if relation in ("left of", "right of"):
        return (a0, p0), (a1, p1)
    return (p0, a0), (p1, a1)


def _pair_ok(a: Obj, b: Obj) -> bool:
    """Whether two placed objects fit the image, do not overlap and relate unambiguously."""
    for o in (a, b):
        m = _margin(o.size)
        if not (m <= o.x <= 1 - m and m <= o.y <= 1 - m):
            return False
    dx, dy = abs(a.x - b.x), abs(a.y - b.y)
    dom, other = max(dx, dy), min(dx, dy)
    return (
        dom >= 0.3
        and other <= 0.5 * dom
        and math.hypot(dx, dy) >= _radius(a.size) + _radius(b.size) + 0.02
    )


def _with_pair_positions(
    a: tuple[str, str, str], b: tuple[str, str, str], relation: str, rng: np.random.Generator
) -> tuple[Obj, Obj]:
    """Objects with attributes (shape, colour, size) ``a`` and ``b``, placed so a relation b."""
    p0, p1 = _place_pair(a[2], b[2], relation, rng)
    return Obj(a[0], a[1], a[2], *p0), Obj(b[0], b[1], b[2], *p1)


def _allowed_pairs(exclude_pairs: frozenset[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(c, s) for c in COLORS for s in SHAPES if (c, s) not in exclude_pairs]


def sample_scene(
    rng: np.random.Generator,
    n_objects: int | None = None,
    exclude_pairs: frozenset[tuple[str, str]] = frozenset(),
    require_pair: bool = False,
) -> Scene:
    """Sample a random scene.

    ``n_objects`` is 1 or 2 (random, 50/50, when None). Two objects always differ in their
    (colour, shape) pair. No object has a (colour, shape) pair in ``exclude_pairs``; with
    ``require_pair`` at least one object's pair is in :data:`HELDOUT_PAIRS`.
    """
    n = int(rng.integers(1, 3)) if n_objects is None else n_objects
    if n not in (1, 2):
        raise ValueError("n_objects must be 1 or 2")
    background = _pick(rng, BACKGROUNDS)
    allowed = _allowed_pairs(exclude_pairs)
    if require_pair:
        heldout = sorted(HELDOUT_PAIRS - exclude_pairs)
        if not heldout:
            raise ValueError("require_pair with every held-out pair excluded")
        first = heldout[int(rng.integers(len(heldout)))]
    else:
        if not allowed:
            raise ValueError("every (colour, shape) pair is excluded")
        first = allowed[int(rng.integers(len(allowed)))]
    pairs = [first]
    if n == 2:
        rest = [p for p in allowed if p != first]
        if not rest:
            raise ValueError("not enough (colour, shape) pairs left for two objects")
        pairs.append(rest[int(rng.integers(len(rest)))])
        if rng.random() < 0.5:
            pairs.reverse()
    attrs = [(s, c, _pick(rng, SIZES)) for c, s in pairs]
    if n == 1:
        x, y = _place_one(attrs[0][2], rng)
        return Scene(background, (Obj(*attrs[0], x, y),))
    relation = _pick(rng, RELATIONS)
    return Scene(background, _with_pair_positions(attrs[0], attrs[1], relation, rng))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices of ``shape`` for unit scale, centred at the origin (y down)."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([0.5 * np.cos(t), 0.5 * np.sin(t)], axis=1)
    if shape == "square":
        h = 0.43
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    if shape == "triangle":
        t = np.deg2rad(np.array([-90.0, 30.0, 150.0]))
        return _R_FACTOR * np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "star":
        t = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, _R_FACTOR, 0.26)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if shape == "cross":
        a, w = 0.5, 0.17
        pts = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w)]
        pts += [(w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
        return np.array(pts, dtype=float)
    raise ValueError(f"unknown shape {shape!r}")


_POLYGONS: dict[str, np.ndarray] = {s: _unit_polygon(s) for s in SHAPES}


def _jitter_rgb(
    rgb: tuple[int, int, int], amount: int, rng: np.random.Generator | None
) -> tuple[int, int, int]:
    if rng is None or amount == 0:
        return rgb
    d = rng.integers(-amount, amount + 1, size=3)
    r, g, b = (int(min(255, max(0, c + int(dc)))) for c, dc in zip(rgb, d, strict=True))
    return (r, g, b)


def render(scene: Scene, size: int = 64, rng: np.random.Generator | None = None) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``size`` x ``size`` pixels.

    With ``rng``, each object's scale within its size class, its rotation (+-15 degrees) and its
    colour shade (+-12 per channel) are jittered, and the background shade slightly; without it
    the rendering is canonical (mid-range scale, no rotation, exact colours). Drawn at 4x and
    box-filtered down for antialiasing.
    """
    big = size * _SUPERSAMPLE
    bg = _jitter_rgb(BACKGROUND_RGB[scene.background], BACKGROUND_JITTER, rng)
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        lo, hi = SCALE_RANGE[obj.size]
        if rng is None:
            scale, angle = (lo + hi) / 2, 0.0
        else:
            scale = float(rng.uniform(lo, hi))
            angle = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
        th = math.radians(angle)
        c, s = math.cos(th), math.sin(th)
        rot = np.array([[c, s], [-s, c]])
        pts = (_POLYGONS[obj.shape] @ rot) * (scale * big)
        pts += np.array([obj.x * big, obj.y * big])
        fill = _jitter_rgb(COLOR_RGB[obj.color], COLOR_JITTER, rng)
        draw.polygon([(float(px), float(py)) for px, py in pts], fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)


# --------------------------------------------------------------------------------------------
# Composed triplets
# --------------------------------------------------------------------------------------------


def _refer(scene: Scene, idx: int, rng: np.random.Generator, allow_it: bool = False) -> str:
    """A definite description ("the circle", "the red circle", "it") that picks out one object."""
    obj = scene.objects[idx]
    others = [o for k, o in enumerate(scene.objects) if k != idx]
    if allow_it and not others and rng.random() < 0.15:
        return "it"
    if all(o.shape != obj.shape for o in others):
        level = 0
    elif all(o.pair != obj.pair for o in others):
        level = 1
    else:
        level = 2
    if level < 2 and rng.random() < 0.35:
        level += 1
    words = [obj.shape]
    if level >= 1:
        words.insert(0, obj.color)
    if level >= 2:
        words.insert(0, _size_word(obj.size, rng))
    return "the " + " ".join(words)


def _full_np(obj: Obj, rng: np.random.Generator) -> str:
    return _with_article(f"{_size_word(obj.size, rng)} {obj.color} {obj.shape}")


def _applicable_kinds(scene: Scene) -> tuple[str, ...]:
    if len(scene.objects) == 1:
        return ("recolour", "reshape", "resize", "add")
    return ("recolour", "reshape", "resize", "remove", "move")


def _refit(objs: list[Obj], scene: Scene, rng: np.random.Generator) -> tuple[Obj, ...]:
    """Keep positions when still valid; otherwise re-place, keeping the scene's relation."""
    if len(objs) == 1:
        o = objs[0]
        m = _margin(o.size)
        return (replace(o, x=min(max(o.x, m), 1 - m), y=min(max(o.y, m), 1 - m)),)
    a, b = objs
    if _pair_ok(a, b):
        return (a, b)
    rel = scene.relation
    assert rel is not None
    return _with_pair_positions(a.attrs, b.attrs, rel, rng)


def compose_triplet(
    scene: Scene,
    rng: np.random.Generator,
    kind: str | None = None,
    exclude_pairs: frozenset[tuple[str, str]] = frozenset(),
) -> tuple[Scene, str, Scene, str]:
    """A composed-retrieval triplet ``(reference, modification_text, target, kind)``.

    ``kind`` is one of :data:`COMPOSE_KINDS` (random among those that apply when None): recolour,
    reshape, resize and move/remove (two objects) or add (one object). The target keeps the
    background, never has a (colour, shape) pair in ``exclude_pairs`` and always differs from
    the reference (``key()``). Raises ValueError when ``kind`` does not apply.
    """
    kinds = _applicable_kinds(scene)
    if kind is None:
        kind = _pick(rng, kinds)
    if kind not in kinds:
        raise ValueError(f"{kind!r} does not apply to a scene with {len(scene.objects)} objects")
    objs = list(scene.objects)
    n = len(objs)
    order = [int(i) for i in rng.permutation(n)]
    allowed = set(_allowed_pairs(exclude_pairs))

    def free_pair(i: int, pair: tuple[str, str]) -> bool:
        return pair in allowed and all(o.pair != pair for k, o in enumerate(objs) if k != i)

    if kind == "recolour":
        for i in order:
            o = objs[i]
            cands = [c for c in COLORS if c != o.color and free_pair(i, (c, o.shape))]
            if not cands:
                continue
            new = _pick(rng, cands)
            ref = _refer(scene, i, rng, allow_it=True)
            tmpl = _pick(
                rng,
                (
                    "make {r} {c}",
                    "change {r} to {c}",
                    "the same but {r} is {c}",
                    "paint {r} {c}",
                    "color {r} {c}",
                ),
            )
            text = tmpl.format(r=ref, c=new)
            objs[i] = replace(o, color=new)
            break
        else:
            raise ValueError("no colour left to recolour to")
    elif kind == "reshape":
        for i in order:
            o = objs[i]
            cands = [s for s in SHAPES if s != o.shape and free_pair(i, (o.color, s))]
            if not cands:
                continue
            new = _pick(rng, cands)
            ref = _refer(scene, i, rng, allow_it=True)
            tmpl = _pick(
                rng,
                (
                    "turn {r} into {a}",
                    "make {r} {a}",
                    "change {r} into {a}",
                    "replace {r} with {ac}",
                    "swap {r} for {ac}",
                ),
            )
            text = tmpl.format(r=ref, a=_with_article(new), ac=_with_article(f"{o.color} {new}"))
            objs[i] = replace(o, shape=new)
            break
        else:
            raise ValueError("no shape left to reshape to")
    elif kind == "resize":
        i = order[0]
        o = objs[i]
        new = "large" if o.size == "small" else "small"
        ref = _refer(scene, i, rng, allow_it=True)
        opts: tuple[str, ...]
        if new == "large":
            opts = ("make {r} bigger", "make {r} larger", "enlarge {r}", "make {r} {w}")
        else:
            opts = ("make {r} smaller", "shrink {r}", "make {r} {w}")
        text = _pick(rng, opts).format(r=ref, w=_size_word(new, rng))
        objs[i] = replace(o, size=new)
        objs = list(_refit(objs, scene, rng))
    elif kind == "add":
        base = objs[0]
        pair_cands = [p for p in sorted(allowed) if p != base.pair]
        color, shape = pair_cands[int(rng.integers(len(pair_cands)))]
        size = _pick(rng, SIZES)
        rel = _pick(rng, RELATIONS)
        new_obj, placed_base = _with_pair_positions((shape, color, size), base.attrs, rel, rng)
        ref = _refer(scene, 0, rng, allow_it=True)
        verb = _pick(rng, ("add", "put", "place", "now add"))
        text = f"{verb} {_full_np(new_obj, rng)} {_pick(rng, _REL_WORDS[rel])} {ref}"
        objs = [new_obj, placed_base] if rng.random() < 0.5 else [placed_base, new_obj]
    elif kind == "remove":
        i = order[0]
        keep = 1 - i
        if rng.random() < 0.2:
            text = _pick(rng, ("keep only {r}", "only keep {r}")).format(r=_refer(scene, keep, rng))
        else:
            tmpl = _pick(rng, ("remove {r}", "take away {r}", "delete {r}", "get rid of {r}"))
            text = tmpl.format(r=_refer(scene, i, rng))
        objs = [objs[keep]]
    else:  # move
        i = order[0]
        j = 1 - i
        cur = _relation_between(objs[i], objs[j])
        rel = _pick(rng, [r for r in RELATIONS if r != cur])
        tmpl = _pick(rng, ("put {a} {rel} {b}", "move {a} {rel} {b}", "place {a} {rel} {b}"))
        text = tmpl.format(
            a=_refer(scene, i, rng), rel=_pick(rng, _REL_WORDS[rel]), b=_refer(scene, j, rng)
        )
        moved, other = _with_pair_positions(objs[i].attrs, objs[j].attrs, rel, rng)
        objs[i], objs[j] = moved, other
    target = Scene(scene.background, tuple(objs))
    assert target.key() != scene.key()
    return scene, text, target, kind


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _split_seed(split: str) -> int:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
    return SPLIT_SEEDS[split]


def _has_heldout(scene: Scene) -> bool:
    return any(o.pair in HELDOUT_PAIRS for o in scene.objects)


def example(split: str, i: int, size: int = 64) -> Example:
    """The ``i``-th example of ``split``, deterministic and independent of every other index.

    train/val/test never contain a held-out (colour, shape) pair; every "heldout" scene does.
    """
    rng = np.random.default_rng([_split_seed(split), i])
    if split == "heldout":
        scene = sample_scene(rng, require_pair=True)
    else:
        scene = sample_scene(rng, exclude_pairs=HELDOUT_PAIRS)
    text, claim = caption(scene, rng)
    image = render(scene, size, rng)
    return Example(scene, image, text, claim)


def examples(split: str, n: int, start: int = 0, size: int = 64) -> list[Example]:
    """Examples ``start`` .. ``start + n - 1`` of ``split``."""
    return [example(split, k, size) for k in range(start, start + n)]


def triplet(
    split: str, i: int, size: int = 64
) -> tuple[Image.Image, str, Image.Image, Scene, Scene, str]:
    """The ``i``-th composed triplet of ``split``:
    ``(reference_image, text, target_image, reference_scene, target_scene, kind)``.

    Deterministic per index (stream ``[seed, i, 7]``). In train/val/test neither scene holds a
    held-out pair; in "heldout" the reference or the target (usually both) holds one.
    """
    rng = np.random.default_rng([_split_seed(split), i, 7])
    if split == "heldout":
        for _ in range(100):
            ref = sample_scene(rng, require_pair=bool(rng.random() < 0.5))
            ref, text, target, kind = compose_triplet(ref, rng)
            if _has_heldout(target) or _has_heldout(ref):
                break
        else:  # pragma: no cover - vanishingly unlikely
            raise RuntimeError("could not sample a held-out triplet")
    else:
        ref = sample_scene(rng, exclude_pairs=HELDOUT_PAIRS)
        ref, text, target, kind = compose_triplet(ref, rng, exclude_pairs=HELDOUT_PAIRS)
    return render(ref, size, rng), text, render(target, size, rng), ref, target, kind


def write_dataset(out_dir: Path, n: int, split: str = "train", seed_offset: int = 0) -> Path:
    """Write ``n`` examples as ``scene_00000.png`` ... plus ``captions.tsv``; return its path.

    The TSV has the header ``filepath<TAB>title`` with file paths relative to its folder, as
    open_clip's CSV data loader expects (``--csv-separator "\\t"``). Example ``k`` is
    ``example(split, seed_offset + k)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tsv = out / "captions.tsv"
    with tsv.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["filepath", "title"])
        for k in range(n):
            ex = example(split, seed_offset + k)
            name = f"scene_{k:05d}.png"
            ex.image.save(out / name, format="PNG", compress_level=1)
            writer.writerow([name, ex.caption])
    return tsv
