"""A small parser from captions back to claims, written apart from both phrasing modules.

It reads the training phrasings and the held-out ones (synonyms, anaphors such as "on its
left", label layouts, attributes after the noun, one-letter typos), so a test can check that
every caption says exactly its claim. Known words are learnt from typo-free captions; a word it
does not know is read as the known word one edit away.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from models import synthetic as syn

SHAPES = {"circle": "circle", "disc": "circle", "disk": "circle", "square": "square",
          "triangle": "triangle", "star": "star", "five-pointed star": "star", "cross": "cross",
          "plus sign": "cross", "plus": "cross"}
COLORS = {c: c for c in syn.COLORS} | {"violet": "purple"}
SIZES = {w: "small" for w in ("small", "little", "tiny", "mini", "teeny")} | {
    w: "large" for w in ("large", "big", "huge", "giant")}
BACKGROUNDS = {"gray": "gray", "grey": "gray", "beige": "beige", "cream": "beige",
               "teal": "teal", "navy": "navy"}
RELS = {
    "to the left side of": "left of", "at the left of": "left of", "to the left of": "left of",
    "on the left of": "left of", "left of": "left of",
    "to the right side of": "right of", "at the right of": "right of",
    "to the right of": "right of", "on the right of": "right of", "right of": "right of",
    "on top of": "above", "higher than": "above", "up above": "above", "above": "above",
    "over": "above",
    "lower than": "below", "underneath": "below", "beneath": "below", "below": "below",
    "under": "below",
}
ANAPHORS = {"on its left": "left of", "to its left": "left of", "on its right": "right of",
            "to its right": "right of", "above it": "above", "on top of it": "above",
            "below it": "below", "under it": "below"}
BG_PATTERNS = [r"^on (?:an? )?(\w+) background, ", r" on (?:an? )?(\w+) background$",
               r", (\w+) background$", r"^(?:an? )?(\w+) background with ",
               r" against (?:an? )?(\w+) backdrop$", r"; the background is (\w+)$",
               r"^(?:an? )?(\w+) background behind ", r"^background (\w+): "]
SPELLINGS = {"colored": "coloured"}
POST_MARKERS = {"coloured", "colored", "which", "that's", "that", "in"}
ARTICLES = {"a", "an", "the", "one"}


def _edits1(a: str, b: str) -> bool:
    """Whether ``b`` is one deletion, insertion, substitution or adjacent swap from ``a``."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


class ClaimParser:
    def __init__(self, clean_captions: Iterable[str]) -> None:
        self.known = {w for t in clean_captions for w in re.findall(r"[a-z'-]+", t.lower())}

    def _fix(self, word: str) -> str:
        if word in self.known or len(word) < 4:
            return word
        cands = sorted(k for k in self.known if _edits1(word, k))
        # a reader trusts a word's first and last letters ("yelow" is yellow, not below)
        cands = [k for k in cands if (k[0], k[-1]) == (word[0], word[-1])] or cands
        meanings = {SIZES.get(k, COLORS.get(k, SHAPES.get(k, SPELLINGS.get(k, k))))
                    for k in cands}
        return cands[0] if len(meanings) == 1 else word  # "teny": tiny or teeny, both small

    def parse(self, text: str) -> syn.Claim:
        t = text.strip().lower().rstrip(".")
        t = re.sub(r"[a-z'-]+", lambda m: self._fix(m.group(0)), t)
        t = t.replace("navy blue", "navy")
        background = None
        for pat in BG_PATTERNS:
            m = re.search(pat, t)
            if m and m.group(1) in BACKGROUNDS:
                background = BACKGROUNDS[m.group(1)]
                t = (t[: m.start()] + (" " if 0 < m.start() and m.end() < len(t) else "")
                     + t[m.end():]).strip()
                break
        labels = re.fullmatch(r"(left|top): (.+); (right|bottom): (.+)", t)
        if labels:
            (d0,), (d1,) = self._objects(labels.group(2))[0], self._objects(labels.group(4))[0]
            said = "left of" if labels.group(1) == "left" else "above"
            return syn.Claim((d0, d1), said, background)
        descs, rel, anaphor, rel_first = self._objects(t)
        if len(descs) == 2 and rel is not None and (anaphor or rel_first):
            descs = [descs[1], descs[0]]
        return syn.Claim(tuple(descs), rel if len(descs) == 2 else None, background)

    def _objects(self, t: str) -> tuple[list[syn.ObjDesc], str | None, bool, bool]:
        """(objects in order, relation, said by an anaphor, relation said before any object)."""
        for table, tag in ((ANAPHORS, "ANA"), (SHAPES, "SHAPE"), (RELS, "REL")):
            for phrase in sorted(table, key=len, reverse=True):
                t = re.sub(rf"(?<![\w:-]){re.escape(phrase)}(?![\w-])",
                           f" {tag}:{table[phrase].replace(' ', '_')} ", t)
        tokens = re.findall(r"[A-Z]+:[a-z_]+|[a-z'-]+|[,;:]", t)
        descs: list[dict[str, str | None]] = []
        pending: dict[str, str | None] = {}
        post = False
        rel, anaphor, rel_first = None, False, False
        for tok in tokens:
            if tok.startswith(("REL:", "ANA:")):
                rel = tok.split(":")[1].replace("_", " ")
                anaphor, rel_first = tok.startswith("ANA:"), not descs
                post = False
            elif tok.startswith("SHAPE:"):
                descs.append({"shape": tok[6:], "color": pending.get("color"),
                              "size": pending.get("size")})
                pending, post = {}, False
            elif tok in COLORS or tok in SIZES:
                key, val = ("color", COLORS[tok]) if tok in COLORS else ("size", SIZES[tok])
                (descs[-1] if post and descs else pending)[key] = val
            elif tok in POST_MARKERS and descs:
                post = True
            elif tok in ARTICLES or tok in (",", ";"):
                post = False
        if pending and descs:  # "circle, red, small": attributes after the only noun
            descs[-1].update({k: v for k, v in pending.items() if v})
        objs = [syn.ObjDesc(str(d["shape"]), d["color"], d["size"]) for d in descs]
        return objs, rel, anaphor, rel_first


def canonical(claim: syn.Claim) -> tuple[object, ...]:
    """A claim up to the order its objects are named in ("A left of B" = "B right of A")."""
    objs = list(claim.objects)
    rel = claim.relation
    key = [(d.shape, d.color or "", d.size or "") for d in objs]
    if len(objs) == 2 and key[0] > key[1]:
        objs.reverse()
        rel = syn.inverse_relation(rel) if rel else None
    return (tuple(objs) if rel or len(objs) < 2 else tuple(sorted(objs, key=str)), rel,
            claim.background)
