"""Held-out phrasings: sentence forms, synonyms and noise that no training caption uses.

The same claims as :mod:`.phrasing` (a claim means the same whoever words it), worded apart:
anaphoric relations ("a blue square with a red circle on its left"), label layouts ("left: ...;
right: ..."), "just one", "coloured red", attributes after the noun ("a circle which is small and
red", "circle, red, small"), other articles and plurals ("the", "one", "shapes: ..."), unseen
synonyms (disc, plus sign, violet, huge, mini, grey, backdrop), capitals and full stops, and a
small typo in about one caption in five.
"""

from __future__ import annotations

import numpy as np

from .world import Claim, ObjDesc, _pick

SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "mini", "teeny", "little"),
    "large": ("large", "huge", "giant", "big"),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "disk"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star", "five-pointed star"),
    "cross": ("cross", "plus sign", "plus"),
}
COLOR_WORDS: dict[str, tuple[str, ...]] = {"purple": ("purple", "violet")}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "gray": ("gray", "grey"),
    "beige": ("beige", "cream"),
    "teal": ("teal",),
    "navy": ("navy", "navy blue"),
}
#: subject REL anchor
REL_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("to the left side of", "at the left of", "left of"),
    "right of": ("to the right side of", "at the right of", "right of"),
    "above": ("higher than", "up above", "above"),
    "below": ("lower than", "underneath", "below"),
}
#: "<anchor> with <subject> ANAPHOR": the subject's relation to the anchor, said from the anchor
ANAPHORS: dict[str, tuple[str, ...]] = {
    "left of": ("on its left", "to its left"),
    "right of": ("on its right", "to its right"),
    "above": ("above it", "on top of it"),
    "below": ("below it", "under it"),
}
#: the label layout: which label the subject takes, and which the anchor
LABELS: dict[str, tuple[str, str]] = {
    "left of": ("left", "right"), "right of": ("right", "left"),
    "above": ("top", "bottom"), "below": ("bottom", "top"),
}
_LABEL_ORDER = ("left", "top")  # labels read left before right, top before bottom

ONE_FORMS = ("just_one", "single", "one", "shows", "contains", "see", "the", "commas", "bare")
REL_FORMS = ("with_its", "and_its", "has_its", "sits", "placed", "labels", "two_shapes", "see")
AND_FORMS = ("together", "both", "plus", "shapes", "pair")
BG_FORMS = ("against", "bg_is", "behind", "colon")
NP_STYLES = ("pre", "coloured", "which")


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _a(np_: str) -> str:
    return f"{_article(np_)} {np_}"


def noun_phrase(d: ObjDesc, style: str, rng: np.random.Generator) -> str:
    """``d`` without an article: "huge red disc", "disc coloured red", "disc which is big"."""
    size = _pick(rng, SIZE_WORDS[d.size]) if d.size else None
    color = _pick(rng, COLOR_WORDS.get(d.color, (d.color,))) if d.color else None
    shape = _pick(rng, SHAPE_WORDS[d.shape])
    if style == "coloured" and color:
        verb = _pick(rng, ("coloured", "colored"))
        return " ".join(w for w in (size, shape, verb, color) if w)
    if style == "which" and (color or size):
        rel = _pick(rng, ("which is", "that's"))
        attrs = " and ".join(w for w in (size, color) if w)
        return f"{shape} {rel} {attrs}"
    return " ".join(w for w in (size, color, shape) if w)


def _one(form: str, d: ObjDesc, style: str, rng: np.random.Generator) -> str:
    np_ = noun_phrase(d, style, rng)
    if form == "just_one":
        return f"just one {np_}"
    if form == "single":
        return f"a single {np_}"
    if form == "one":
        return f"one {np_}"
    if form == "shows":
        return f"the image shows {_a(np_)}"
    if form == "contains":
        return f"this picture contains {_a(np_)}"
    if form == "see":
        return f"i can see {_a(np_)}"
    if form == "the":
        return f"the {np_}"
    if form == "commas":
        color = _pick(rng, COLOR_WORDS.get(d.color, (d.color,))) if d.color else None
        size = _pick(rng, SIZE_WORDS[d.size]) if d.size else None
        return ", ".join(w for w in (_pick(rng, SHAPE_WORDS[d.shape]), color, size) if w)
    if form == "bare":
        return np_
    raise KeyError(form)


def _rel(form: str, d0: ObjDesc, d1: ObjDesc, rel: str, style: str,
         rng: np.random.Generator) -> str:
    n0, n1 = noun_phrase(d0, style, rng), noun_phrase(d1, style, rng)
    a0, a1 = _a(n0), _a(n1)
    r = _pick(rng, REL_WORDS[rel])
    if form == "with_its":
        return f"{a1} with {a0} {_pick(rng, ANAPHORS[rel])}"
    if form == "and_its":
        return f"{a1}, and {a0} {_pick(rng, ANAPHORS[rel])}"
    if form == "has_its":
        return f"{a1} has {a0} {_pick(rng, ANAPHORS[rel])}"
    if form == "sits":
        return f"{a0} sits {r} {a1}"
    if form == "placed":
        return f"the {n0} is placed {r} the {n1}"
    if form == "labels":
        mine, theirs = LABELS[rel]
        parts = {mine: a0, theirs: a1}
        first = mine if mine in _LABEL_ORDER else theirs
        second = theirs if first == mine else mine
        return f"{first}: {parts[first]}; {second}: {parts[second]}"
    if form == "two_shapes":
        return f"two shapes, {a0} {r} {a1}"
    if form == "see":
        return f"i can see {a0} {r} {a1}"
    raise KeyError(form)


def _and(form: str, d0: ObjDesc, d1: ObjDesc, style: str, rng: np.random.Generator) -> str:
    n0, n1 = noun_phrase(d0, style, rng), noun_phrase(d1, style, rng)
    if form == "together":
        return f"{_a(n0)} together with {_a(n1)}"
    if form == "both":
        return f"both {_a(n0)} and {_a(n1)}"
    if form == "plus":
        return f"{_a(n0)} as well as {_a(n1)}"
    if form == "shapes":
        return f"shapes: {n0}, {n1}"
    if form == "pair":
        return f"a pair of shapes, {_a(n0)} and {_a(n1)}"
    raise KeyError(form)


def _background(form: str, text: str, bg: str, rng: np.random.Generator) -> str:
    word = _pick(rng, BACKGROUND_WORDS[bg])
    if form == "against":
        return f"{text} against {_a(word)} backdrop"
    if form == "bg_is":
        return f"{text}; the background is {word}"
    if form == "behind":
        return f"{_a(word)} background behind {text}"
    if form == "colon":
        return f"background {word}: {text}"
    raise KeyError(form)


def typo(text: str, rng: np.random.Generator) -> str:
    """One small typo in a word of five letters or more: two inner letters swapped, an inner
    letter dropped, or a letter doubled."""
    words = text.split(" ")
    cands = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 5]
    if not cands:
        return text
    i = cands[int(rng.integers(len(cands)))]
    w = words[i]
    j = int(rng.integers(1, len(w) - 2))
    kind = int(rng.integers(3))
    if kind == 0 and w[j] != w[j + 1]:
        w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    elif kind == 1:
        w = w[:j] + w[j + 1 :]
    else:
        w = w[: j + 1] + w[j] + w[j + 1 :]
    words[i] = w
    return " ".join(words)


def phrase_ood(claim: Claim, rng: np.random.Generator, p_typo: float = 0.2) -> tuple[str, str]:
    """``claim`` in a held-out phrasing; returns ``(text, form name)``.

    The text states exactly the claim, as :func:`.phrasing.phrase` does, in words and frames no
    training caption uses (tests/models/test_ood.py parses them back).
    """
    style = _pick(rng, NP_STYLES)
    if len(claim.objects) == 1:
        d = claim.objects[0]
        forms = [f for f in ONE_FORMS if d.color or f not in ("just_one", "single", "one")]
        form = _pick(rng, forms)
        text = _one(form, d, style, rng)
    elif claim.relation is not None:
        form = _pick(rng, REL_FORMS)
        text = _rel(form, claim.objects[0], claim.objects[1], claim.relation, style, rng)
    else:
        form = _pick(rng, AND_FORMS)
        d0, d1 = claim.objects
        if rng.random() < 0.5:
            d0, d1 = d1, d0
        text = _and(form, d0, d1, style, rng)
    name = f"{form}/{style}"
    if claim.background is not None:
        wrapper = _pick(rng, BG_FORMS)
        text = _background(wrapper, text, claim.background, rng)
        name += f"+{wrapper}"
    if rng.random() < p_typo:
        text = typo(text, rng)
        name += "+typo"
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:] + "."
        name += "+caps"
    return text, name
