"""Composed-retrieval triplets: a reference scene, a modification text and the target scene."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from .phrasing import _REL_WORDS, _size_word, _with_article
from .sampling import _allowed_pairs, _margin, _pair_ok, _with_pair_positions
from .world import COLORS, RELATIONS, SHAPES, SIZES, Obj, Scene, _pick, _relation_between

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


def _change_one(
    scene: Scene,
    order: list[int],
    rng: np.random.Generator,
    candidates: Callable[[int], list[str]],
    templates: tuple[str, ...],
    none_left: str,
) -> tuple[int, str, str, str]:
    """The first object in ``order`` with a value to change to: its index, the new value (one of
    ``candidates(index)``), how the text refers to it, and a template. Raises ValueError
    (``none_left``) when no object has one."""
    for i in order:
        cands = candidates(i)
        if cands:
            new = _pick(rng, cands)
            ref = _refer(scene, i, rng, allow_it=True)
            return i, new, ref, _pick(rng, templates)
    raise ValueError(none_left)


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
        i, new, ref, tmpl = _change_one(
            scene, order, rng,
            lambda k: [c for c in COLORS
                       if c != objs[k].color and free_pair(k, (c, objs[k].shape))],
            ("make {r} {c}", "change {r} to {c}", "the same but {r} is {c}", "paint {r} {c}",
             "color {r} {c}"),
            "no colour left to recolour to",
        )
        text = tmpl.format(r=ref, c=new)
        objs[i] = replace(objs[i], color=new)
    elif kind == "reshape":
        i, new, ref, tmpl = _change_one(
            scene, order, rng,
            lambda k: [s for s in SHAPES
                       if s != objs[k].shape and free_pair(k, (objs[k].color, s))],
            ("turn {r} into {a}", "make {r} {a}", "change {r} into {a}", "replace {r} with {ac}",
             "swap {r} for {ac}"),
            "no shape left to reshape to",
        )
        o = objs[i]
        text = tmpl.format(r=ref, a=_with_article(new), ac=_with_article(f"{o.color} {new}"))
        objs[i] = replace(o, shape=new)
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
