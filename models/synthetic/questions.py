"""Questions about a scene graph whose answers are computed from it (the VQA heads' data).

Types: the colour of a named shape, the shape of a coloured object, size, how many objects (of
a colour or shape), yes/no existence, what is left of / right of / above / below something,
yes/no relations, and the background. Every referent names one object of the scene without
ambiguity, so each question has exactly one answer in :data:`ANSWERS`.

The meaning of a question (its type, referents and answer) is decided here once; a
:class:`Wording` turns it into text. :data:`TRAIN_WORDING` is what the heads learn from; the
held-out wording of the out-of-distribution evaluation lives in ``ood_questions``. Questions
about words the world does not have (``unknown_question``) have no answer: the heads learn from
them (with made-up words) that such a question gets a flat distribution, and are measured on
other words they never saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .phrasing import _REL_WORDS, _SIZE_WORDS
from .world import (
    BACKGROUNDS,
    COLORS,
    RELATIONS,
    SHAPES,
    SIZES,
    Claim,
    ObjDesc,
    Scene,
    _pick,
    _relation_between,
    claim_true,
)

QTYPES: tuple[str, ...] = ("color", "shape", "size", "count", "exists", "relation_what",
                           "relation_yesno", "background")
RELATION_QTYPES: tuple[str, ...] = ("relation_what", "relation_yesno")
COUNTS: tuple[str, ...] = ("0", "1", "2")
NOTHING = "nothing"
#: the answer vocabulary, the classifier's classes
ANSWERS: tuple[str, ...] = (*COLORS, *SHAPES, *SIZES, *COUNTS, "yes", "no", *BACKGROUNDS, NOTHING)


@dataclass(frozen=True)
class Question:
    """A question, its answer (None: about a word the world does not have) and its type."""

    text: str
    answer: str | None
    qtype: str
    form: str = ""


@dataclass(frozen=True)
class Wording:
    """How questions are worded: frames per type and the words for each attribute."""

    frames: dict[str, tuple[str, ...]]
    shape_words: dict[str, tuple[str, ...]]
    size_words: dict[str, tuple[str, ...]]
    rel_words: dict[str, tuple[str, ...]]
    color_words: dict[str, tuple[str, ...]] = field(default_factory=dict)
    nouns: tuple[str, ...] = ("object",)
    noise: Callable[[str, np.random.Generator], tuple[str, str]] | None = None

    def shape(self, s: str, rng: np.random.Generator) -> str:
        return _pick(rng, self.shape_words.get(s, (s,)))

    def color(self, c: str, rng: np.random.Generator) -> str:
        return _pick(rng, self.color_words.get(c, (c,)))

    def size(self, s: str, rng: np.random.Generator) -> str:
        return _pick(rng, self.size_words[s])


TRAIN_WORDING = Wording(
    frames={
        "color": ("what colour is the {r}?", "what color is the {r}?",
                  "what is the colour of the {r}?", "which colour is the {r}?"),
        "shape": ("what shape is the {r}?", "what is the shape of the {r}?",
                  "which shape is the {r}?"),
        "size": ("what size is the {r}?", "is the {r} small or large?", "how big is the {r}?"),
        "count_all": ("how many objects are there?", "how many shapes are there?",
                      "how many objects are in the picture?"),
        "count_attr": ("how many {x} are there?", "how many {x} are in the picture?"),
        "exists": ("is there {np}?", "is there {np} in the picture?",
                   "does the picture contain {np}?"),
        "relation_what": ("what is {rel} the {r}?", "what shape is {rel} the {r}?",
                          "which object is {rel} the {r}?"),
        "relation_yesno": ("is the {r0} {rel} the {r1}?", "is the {r0} located {rel} the {r1}?"),
        "background": ("what colour is the background?", "what is the background colour?",
                       "what color is the background?"),
    },
    shape_words={s: (s,) for s in SHAPES},
    size_words=_SIZE_WORDS,
    rel_words=_REL_WORDS,
    nouns=("object", "shape", "thing"),
)

#: words the world does not have, for the heads to learn that such questions get a flat
#: distribution; the evaluation asks about other ones (``ood_questions.UNSEEN_*``)
TRAIN_UNKNOWN_NOUNS: tuple[str, ...] = ("dog", "house", "tree", "car", "apple", "chair", "moon",
                                        "bottle", "hat", "boat", "cup", "flower", "lamp", "shoe")
TRAIN_UNKNOWN_COLORS: tuple[str, ...] = ("pink", "brown", "cyan", "gold", "silver", "olive")
_SYLLABLES = ("ba", "ko", "ri", "zu", "mel", "tor", "vin", "dak", "pe", "lo", "gra", "sni")


def nonce_word(rng: np.random.Generator, syllables: Sequence[str] = _SYLLABLES) -> str:
    """A made-up word of two or three syllables."""
    return "".join(_pick(rng, syllables) for _ in range(int(rng.integers(2, 4))))


def _article(phrase: str) -> str:
    return f"{'an' if phrase[:1] in 'aeiou' else 'a'} {phrase}"


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x")) else "s")


def _refer(scene: Scene, i: int, rng: np.random.Generator, w: Wording, *,
           no: str = "") -> str | None:
    """A noun phrase (no article) naming object ``i`` of ``scene`` and no other, without the
    attribute ``no`` ("color", "shape" or "size"); None when that cannot be done."""
    o = scene.objects[i]
    others = [p for k, p in enumerate(scene.objects) if k != i]
    order = [a for a in ("shape", "color", "size") if a != no]
    used: list[str] = [order[0]]
    for a in order[1:]:  # add attributes until the phrase names one object, sometimes more
        clash = [p for p in others if all(getattr(p, u) == getattr(o, u) for u in used)]
        if clash or rng.random() < 0.35:
            used.append(a)
    if any(all(getattr(p, u) == getattr(o, u) for u in used) for p in others):
        return None
    words = []
    if "size" in used:
        words.append(w.size(o.size, rng))
    if "color" in used:
        words.append(w.color(o.color, rng))
    words.append(w.shape(o.shape, rng) if "shape" in used else _pick(rng, w.nouns))
    return " ".join(words)


def _desc_text(d: ObjDesc, rng: np.random.Generator, w: Wording) -> str:
    words = [w.size(d.size, rng)] if d.size else []
    words += [w.color(d.color, rng)] if d.color else []
    return _article(" ".join([*words, w.shape(d.shape, rng)]))


def _frame(w: Wording, key: str, rng: np.random.Generator) -> tuple[str, str]:
    frames = w.frames[key]
    k = int(rng.integers(len(frames)))
    return frames[k], f"{key}/{k}"


def _attribute_question(qtype: str, scene: Scene, rng: np.random.Generator,
                        w: Wording) -> Question | None:
    i = int(rng.integers(len(scene.objects)))
    no = {"color": "color", "shape": "shape", "size": "size"}[qtype]
    r = _refer(scene, i, rng, w, no=no)
    if r is None:
        return None
    frame, form = _frame(w, qtype, rng)
    o = scene.objects[i]
    answer = {"color": o.color, "shape": o.shape, "size": o.size}[qtype]
    return Question(frame.format(r=r), answer, qtype, form)


def _count_question(scene: Scene, rng: np.random.Generator, w: Wording) -> Question:
    u = rng.random()
    if u < 0.4:
        frame, form = _frame(w, "count_all", rng)
        return Question(frame, str(len(scene.objects)), "count", form)
    present = rng.random() < 0.7
    if u < 0.7:
        color = (_pick(rng, [o.color for o in scene.objects]) if present
                 else _pick(rng, COLORS))
        x = f"{w.color(color, rng)} {_plural(_pick(rng, w.nouns))}"
        n = sum(o.color == color for o in scene.objects)
    else:
        shape = (_pick(rng, [o.shape for o in scene.objects]) if present
                 else _pick(rng, SHAPES))
        x = _plural(w.shape(shape, rng))
        n = sum(o.shape == shape for o in scene.objects)
    frame, form = _frame(w, "count_attr", rng)
    return Question(frame.format(x=x), str(n), "count", form)


def _exists_question(scene: Scene, rng: np.random.Generator, w: Wording) -> Question:
    def desc(shape: str, color: str, size: str) -> ObjDesc:
        return ObjDesc(shape, color if rng.random() < 0.8 else None,
                       size if rng.random() < 0.4 else None)

    if rng.random() < 0.5:
        o = scene.objects[int(rng.integers(len(scene.objects)))]
        d, answer = desc(o.shape, o.color, o.size), "yes"
    else:
        for _ in range(50):
            d = desc(_pick(rng, SHAPES), _pick(rng, COLORS), _pick(rng, SIZES))
            if not claim_true(Claim((d,)), scene):
                break
        answer = "no"
    frame, form = _frame(w, "exists", rng)
    return Question(frame.format(np=_desc_text(d, rng, w)), answer, "exists", form)


def _relation_what(scene: Scene, rng: np.random.Generator, w: Wording) -> Question | None:
    i = int(rng.integers(len(scene.objects)))
    r = _refer(scene, i, rng, w)
    if r is None:
        return None
    if len(scene.objects) == 2 and rng.random() < 0.6:
        other = scene.objects[1 - i]
        rel = _relation_between(other, scene.objects[i])
    else:
        rel = _pick(rng, RELATIONS)
    answer = NOTHING
    if len(scene.objects) == 2:
        other = scene.objects[1 - i]
        if _relation_between(other, scene.objects[i]) == rel:
            answer = other.shape
    frame, form = _frame(w, "relation_what", rng)
    return Question(frame.format(rel=_pick(rng, w.rel_words[rel]), r=r), answer,
                    "relation_what", form)


def _relation_yesno(scene: Scene, rng: np.random.Generator, w: Wording) -> Question | None:
    if len(scene.objects) != 2:
        return None
    i = int(rng.integers(2))
    r0, r1 = _refer(scene, i, rng, w), _refer(scene, 1 - i, rng, w)
    if r0 is None or r1 is None:
        return None
    true_rel = _relation_between(scene.objects[i], scene.objects[1 - i])
    rel = true_rel if rng.random() < 0.5 else _pick(rng, [x for x in RELATIONS if x != true_rel])
    frame, form = _frame(w, "relation_yesno", rng)
    text = frame.format(r0=r0, r1=r1, rel=_pick(rng, w.rel_words[rel]))
    return Question(text, "yes" if rel == true_rel else "no", "relation_yesno", form)


def _make(qtype: str, scene: Scene, rng: np.random.Generator, w: Wording) -> Question | None:
    if qtype in ("color", "shape", "size"):
        return _attribute_question(qtype, scene, rng, w)
    if qtype == "count":
        return _count_question(scene, rng, w)
    if qtype == "exists":
        return _exists_question(scene, rng, w)
    if qtype == "relation_what":
        return _relation_what(scene, rng, w)
    if qtype == "relation_yesno":
        return _relation_yesno(scene, rng, w)
    if qtype == "background":
        frame, form = _frame(w, "background", rng)
        return Question(frame, scene.background, "background", form)
    raise ValueError(f"unknown question type {qtype!r}")


def _noisy(q: Question, rng: np.random.Generator, w: Wording) -> Question:
    if w.noise is None:
        return q
    text, flags = w.noise(q.text, rng)
    return Question(text, q.answer, q.qtype, q.form + flags)


def question(scene: Scene, rng: np.random.Generator, wording: Wording = TRAIN_WORDING,
             qtype: str | None = None) -> Question:
    """A question about ``scene`` with its answer; of type ``qtype`` when it applies to the
    scene (a relation question needs two objects, a referent must be unambiguous), else of
    another type."""
    order = [qtype] if qtype else []
    order += [QTYPES[int(k)] for k in rng.permutation(len(QTYPES))]
    for t in order:
        q = _make(t, scene, rng, wording)
        if q is not None:
            return _noisy(q, rng, wording)
    raise RuntimeError("no question applies")  # pragma: no cover - count always applies


def unknown_question(scene: Scene, rng: np.random.Generator, wording: Wording = TRAIN_WORDING,
                     nouns: Sequence[str] = TRAIN_UNKNOWN_NOUNS,
                     colors: Sequence[str] = TRAIN_UNKNOWN_COLORS,
                     nonce: bool = True) -> Question:
    """A question about a thing or colour the world does not have ("what colour is the
    teapot?"): it has no answer. ``nonce`` mixes in made-up words besides ``nouns``."""
    thing = nonce_word(rng) if nonce and rng.random() < 0.4 else _pick(rng, nouns)
    kind = _pick(rng, ("color", "size", "relation_what", "shape"))
    if kind == "shape":
        color = nonce_word(rng) if nonce and rng.random() < 0.4 else _pick(rng, colors)
        r = f"{color} {_pick(rng, wording.nouns)}"
    else:
        r = thing
    frame, form = _frame(wording, kind, rng)
    rel = _pick(rng, wording.rel_words[_pick(rng, RELATIONS)])
    return _noisy(Question(frame.format(r=r, rel=rel), None, "unknown", form), rng, wording)
