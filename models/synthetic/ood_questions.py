"""Held-out question wording and out-of-distribution question splits.

The same meanings as :mod:`.questions` (type, referents, answer), worded in frames no training
question uses ("tell me the colour of the disc."), with the held-out synonyms of
:mod:`.ood_phrasing` (disc, plus sign, violet, huge, teeny, ...), capitals, full stops and a
one-letter typo in about one question in five; images drawn by the OOD renderer. Nothing is
trained on these: ``ood-val`` fits the answer probability's temperature, ``ood-test`` is only
reported. ``UNSEEN_*`` are the words of the unknown-word questions, none of which the heads met
in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .ood import OOD_SPLIT_SEEDS, render_ood, sample_ood_scene
from .ood_phrasing import COLOR_WORDS, REL_WORDS, SHAPE_WORDS, SIZE_WORDS, typo
from .questions import QTYPES, TRAIN_WORDING, Question, Wording, question, unknown_question
from .world import Scene


def _noise(text: str, rng: np.random.Generator) -> tuple[str, str]:
    flags = ""
    if rng.random() < 0.2:
        text, flags = typo(text, rng), "+typo"
    if rng.random() < 0.3:
        text, flags = text[0].upper() + text[1:], flags + "+caps"
    return text, flags


HELDOUT_WORDING = Wording(
    frames={
        "color": ("tell me the colour of the {r}.", "the {r} has which colour?",
                  "which colour does the {r} have?", "name the colour of the {r}."),
        "shape": ("the {r} is what shape?", "which kind of shape is the {r}?",
                  "name the shape of the {r}."),
        "size": ("is the {r} big or little?", "how large is the {r}?",
                 "the {r}: small or large?"),
        "count_all": ("count the objects.", "how many things can you see?",
                      "number of shapes in the picture?"),
        "count_attr": ("count the {x}.", "how many {x} can you see?"),
        "exists": ("can you see {np}?", "is {np} visible?", "does {np} appear here?"),
        "relation_what": ("which shape is found {rel} the {r}?", "name what is {rel} the {r}.",
                          "what do you see {rel} the {r}?"),
        "relation_yesno": ("does the {r0} sit {rel} the {r1}?",
                           "would you say the {r0} is {rel} the {r1}?"),
        "background": ("the backdrop is which colour?", "name the background colour.",
                       "which colour is behind the shapes?"),
    },
    shape_words=SHAPE_WORDS,
    size_words=SIZE_WORDS,
    rel_words=REL_WORDS,
    color_words=COLOR_WORDS,
    nouns=("item", "figure", "one"),
    noise=_noise,
)

UNSEEN_NOUNS: tuple[str, ...] = ("elephant", "guitar", "teapot", "bicycle", "umbrella",
                                 "banana", "violin", "kettle", "lantern", "pineapple", "rocket",
                                 "giraffe")
UNSEEN_COLORS: tuple[str, ...] = ("magenta", "turquoise", "maroon", "lilac", "crimson", "amber")


@dataclass(frozen=True)
class AskExample:
    """One image with a question about it, and whether the question is worded the held-out way."""

    scene: Scene
    image: Image.Image
    question: Question
    heldout_wording: bool


def ood_ask_example(split: str, i: int) -> AskExample:
    """The ``i``-th question of an OOD split: the OOD renderer's image; question types in turn
    (``i`` modulo the 8 types, another where one does not apply); odd ``i`` in the held-out
    wording, even ``i`` in the training wording."""
    if split not in OOD_SPLIT_SEEDS:
        raise ValueError(f"unknown OOD split {split!r}; expected one of {sorted(OOD_SPLIT_SEEDS)}")
    rng = np.random.default_rng([OOD_SPLIT_SEEDS[split], i, 16])
    s = sample_ood_scene(rng, heldout=split == "ood-heldout")
    heldout = i % 2 == 1
    wording = HELDOUT_WORDING if heldout else TRAIN_WORDING
    q = question(s.scene, rng, wording, QTYPES[(i // 2) % len(QTYPES)])
    return AskExample(s.scene, render_ood(s, rng), q, heldout)


def unseen_word_question(scene: Scene, rng: np.random.Generator, heldout: bool) -> Question:
    """A question about a thing or colour no training question named ("what colour is the
    teapot?"), in either wording."""
    return unknown_question(scene, rng, HELDOUT_WORDING if heldout else TRAIN_WORDING,
                            UNSEEN_NOUNS, UNSEEN_COLORS, nonce=False)
