"""The caption decoder's language: its word vocabulary, the caption it learns for a scene, and
a parser from captions back to claims (the world's grammar), which the evaluation uses to check
that a generated caption is a true claim about its scene.

Target captions state the full scene graph in one fixed form: "a small red circle left of a
large blue square on a teal background". The first object is the one on the left (or above),
so every scene has exactly one target and the relation is always "left of" or "above".
"""

from __future__ import annotations

import re

from .synthetic.phrasing import _REL_WORDS, _SIZE_WORDS
from .synthetic.world import BACKGROUNDS, COLORS, SHAPES, Claim, Obj, ObjDesc, Scene

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
CAPTION_WORDS: tuple[str, ...] = (
    PAD, BOS, EOS, "a", "an", "small", "large", *COLORS, *SHAPES, "left", "of", "above",
    "on", "background", *BACKGROUNDS,
)


def _np(o: Obj) -> str:
    words = f"{o.size} {o.color} {o.shape}"
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def canonical_caption(scene: Scene) -> str:
    """The one caption the decoder learns for ``scene``."""
    objs = list(scene.objects)
    if len(objs) == 2 and scene.relation in ("right of", "below"):
        objs.reverse()
    body = _np(objs[0])
    if len(objs) == 2:
        rel = Scene(scene.background, tuple(objs)).relation
        body += f" {rel} {_np(objs[1])}"
    bg = scene.background
    return f"{body} on {'an' if bg[0] in 'aeiou' else 'a'} {bg} background"


def encode_caption(text: str) -> list[int]:
    """Word ids of ``text`` framed by BOS and EOS. Raises KeyError for a word not in
    :data:`CAPTION_WORDS`."""
    index = {w: i for i, w in enumerate(CAPTION_WORDS)}
    return [index[BOS], *(index[w] for w in text.split()), index[EOS]]


def decode_caption(ids: list[int], vocab: tuple[str, ...] = CAPTION_WORDS) -> str:
    """Text of word ids, stopping at EOS."""
    words = []
    for i in ids:
        w = vocab[i]
        if w == EOS:
            break
        if w not in (PAD, BOS):
            words.append(w)
    return " ".join(words)


# ---- parsing (the training phrasings' noun phrases, relations and background wrappers) -------

_SIZES = {w: s for s, ws in _SIZE_WORDS.items() for w in ws}
_RELS = {w: r for r, ws in _REL_WORDS.items() for w in ws}
_NP = re.compile(
    rf"(?:an? |the )?(?:({'|'.join(_SIZES)}) )?(?:({'|'.join(COLORS)}) )?({'|'.join(SHAPES)})")
_REL_ALT = "|".join(sorted(map(re.escape, _RELS), key=len, reverse=True))
_BG = re.compile(rf"^(.*?)(?: on an? ({'|'.join(BACKGROUNDS)}) background|, "
                 rf"({'|'.join(BACKGROUNDS)}) background)$")
_BG_PRE = re.compile(rf"^(?:on an? ({'|'.join(BACKGROUNDS)}) background, |an? "
                     rf"({'|'.join(BACKGROUNDS)}) background with )(.*)$")


def _desc(m: re.Match[str]) -> ObjDesc:
    size, color, shape = m.groups()
    return ObjDesc(shape, color, _SIZES[size] if size else None)


def parse_caption(text: str) -> Claim | None:
    """The claim a caption states, or None when it is not a sentence of the grammar: one noun
    phrase, or two joined by a relation ("is" optional) or by "and", with the background
    optionally before ("on a teal background, ...", "a teal background with ...") or after
    ("... on a teal background", "..., teal background"); "there is" may lead."""
    text = text.strip().lower().rstrip(".")
    background = None
    m = _BG.match(text)
    pre = _BG_PRE.match(text)
    if m:
        text, background = m.group(1), m.group(2) or m.group(3)
    elif pre:
        background, text = pre.group(1) or pre.group(2), pre.group(3)
    text = text.removeprefix("there is ")
    one = _NP.fullmatch(text)
    if one:
        return Claim((_desc(one),), None, background)
    np_ = _NP.pattern
    two = re.fullmatch(rf"({np_}) (?:is )?({_REL_ALT}) ({np_})", text)
    if two:
        g = two.groups()
        d0, d1 = ObjDesc(g[3], g[2], _SIZES[g[1]] if g[1] else None), ObjDesc(
            g[8], g[7], _SIZES[g[6]] if g[6] else None)
        return Claim((d0, d1), _RELS[g[4]], background)
    both = re.fullmatch(rf"({np_}) and ({np_})", text)
    if both:
        g = both.groups()
        return Claim((ObjDesc(g[3], g[2], _SIZES[g[1]] if g[1] else None),
                      ObjDesc(g[7], g[6], _SIZES[g[5]] if g[5] else None)), None, background)
    return None


def names_every_object(claim: Claim, scene: Scene) -> bool:
    """Whether ``claim`` names as many objects as ``scene`` holds, each with its colour (true
    claims only: then each description is one of the scene's objects)."""
    return len(claim.objects) == len(scene.objects) and all(d.color for d in claim.objects)
