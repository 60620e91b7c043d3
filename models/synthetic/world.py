"""The world's vocabulary, scene graphs, claims and their truth, and hard negatives.

Shared by every renderer and phrasing of the synthetic world: a claim is true of a scene graph
whatever draws the scene or words the claim.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

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

_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


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
