"""Scene sampling of the training world: placements that keep relations unambiguous."""

from __future__ import annotations

import math

import numpy as np

from .world import BACKGROUNDS, COLORS, HELDOUT_PAIRS, RELATIONS, SHAPES, SIZES, Obj, Scene, _pick

#: Rendered object width as a fraction of the image width, per size class.
SCALE_RANGE: dict[str, tuple[float, float]] = {"small": (0.16, 0.22), "large": (0.30, 0.38)}

# Every polygon fits in a circle of radius _R_FACTOR * scale around the object's centre.
_R_FACTOR = 0.62
_PAD = 0.01

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
