"""Captions in the training phrasings: claims sampled from a scene and worded many ways."""

from __future__ import annotations

import numpy as np

from .world import _INVERSE, Claim, Obj, ObjDesc, Scene, _pick, _relation_between, claim_true

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
