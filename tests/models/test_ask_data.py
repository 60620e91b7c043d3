"""The VQA and captioning data: questions whose answers follow from the scene graph, in the
training and held-out wordings, and the caption grammar (issue 16)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from models import synthetic as syn
from models.describe_grammar import (
    CAPTION_WORDS,
    canonical_caption,
    decode_caption,
    encode_caption,
    names_every_object,
    parse_caption,
)
from models.synthetic.ood_questions import (
    HELDOUT_WORDING,
    UNSEEN_COLORS,
    UNSEEN_NOUNS,
    ood_ask_example,
    unseen_word_question,
)
from models.synthetic.questions import (
    ANSWERS,
    QTYPES,
    TRAIN_UNKNOWN_COLORS,
    TRAIN_UNKNOWN_NOUNS,
    TRAIN_WORDING,
    question,
    unknown_question,
)

# a red circle on the left, a large blue square on the right
PAIR = syn.Scene("teal", (syn.Obj("circle", "red", "small", 0.25, 0.5),
                          syn.Obj("square", "blue", "large", 0.75, 0.55)))
ALONE = syn.Scene("navy", (syn.Obj("star", "green", "large", 0.5, 0.5),))


def _questions(scene: syn.Scene, qtype: str, wording=TRAIN_WORDING, n: int = 60):
    qs = [question(scene, np.random.default_rng(k), wording, qtype) for k in range(n)]
    return [q for q in qs if q.qtype == qtype]


@pytest.mark.parametrize("wording", [TRAIN_WORDING, replace(HELDOUT_WORDING, noise=None)],
                         ids=["train", "heldout"])  # (typos would hide the words read here)
def test_answers_follow_from_the_scene(wording) -> None:
    low = lambda q: q.text.lower()  # noqa: E731
    for q in _questions(PAIR, "color", wording):
        named_circle = any(w in low(q) for w in ("circle", "disc", "disk"))
        assert q.answer == ("red" if named_circle else "blue"), q.text
    for q in _questions(PAIR, "shape", wording):
        assert q.answer == ("circle" if "red" in low(q) else "square"), q.text
    for q in _questions(PAIR, "size", wording):
        assert q.answer == ("large" if "blue" in low(q) or "square" in low(q) else "small")
    for q in _questions(PAIR, "background", wording):
        assert q.answer == "teal"
    for q in _questions(ALONE, "relation_what", wording):
        assert q.answer == "nothing", q.text  # one object: nothing stands beside it
    answers = {q.answer for q in _questions(PAIR, "relation_yesno", wording, 80)}
    assert answers == {"yes", "no"}


def test_relation_questions_on_a_known_layout() -> None:
    # the training wording: the relation phrase names the true side or another one
    left = ("left of", "to the left of", "on the left of")
    for q in _questions(PAIR, "relation_what", n=120):
        anchor_is_square = "square" in q.text or "blue" in q.text
        says_left = any(f"is {w} the" in q.text or f"shape is {w} the" in q.text
                        or f"object is {w} the" in q.text for w in left)
        says_right = any(f"is {w} the" in q.text or f"shape is {w} the" in q.text
                         or f"object is {w} the" in q.text
                         for w in ("right of", "to the right of", "on the right of"))
        expected = ("circle" if anchor_is_square and says_left
                    else "square" if not anchor_is_square and says_right else "nothing")
        assert q.answer == expected, q.text
    for q in _questions(PAIR, "relation_yesno", n=120):
        circle_first = q.text.index("circle" if "circle" in q.text else "red") < q.text.index(
            "square" if "square" in q.text else "blue")
        rel = next(r for r in ("left of", "right of", "above", "below", "over", "under",
                               "on top of", "beneath") if r in q.text)
        truth = rel == ("left of" if circle_first else "right of")
        assert q.answer == ("yes" if truth else "no"), q.text


def test_every_type_and_answer_in_the_vocabulary() -> None:
    seen_types, seen_answers = set(), set()
    for i in range(400):
        ex = syn.example("train", i, size=8)
        q = question(ex.scene, np.random.default_rng(i))
        assert q.answer in ANSWERS
        seen_types.add(q.qtype)
        seen_answers.add(q.answer)
    assert seen_types == set(QTYPES)
    assert len(seen_answers) >= len(ANSWERS) - 2


def test_heldout_wording_shares_no_frame_with_training() -> None:
    train = {f for fs in TRAIN_WORDING.frames.values() for f in fs}
    held = {f for fs in HELDOUT_WORDING.frames.values() for f in fs}
    assert not train & held
    # no held-out question opens the way a training frame does (beyond "how many ...")
    starts = tuple(p for p in (f.split("{")[0] for f in train) if len(p) > len("how many "))
    texts = [ood_ask_example("ood-val", i).question.text.lower() for i in range(1, 80, 2)]
    assert not [t for t in texts if t.startswith(starts)]


def test_ood_examples_alternate_wordings_and_cover_types() -> None:
    exs = [ood_ask_example("ood-test", i) for i in range(32)]
    assert [e.heldout_wording for e in exs[:4]] == [False, True, False, True]
    assert {e.question.qtype for e in exs} >= set(QTYPES) - {"relation_yesno"}
    assert all(e.question.answer in ANSWERS for e in exs)
    with pytest.raises(ValueError, match="unknown OOD split"):
        ood_ask_example("test", 0)


def test_unknown_word_questions_use_words_the_training_never_did() -> None:
    assert not set(UNSEEN_NOUNS) & set(TRAIN_UNKNOWN_NOUNS)
    assert not set(UNSEEN_COLORS) & set(TRAIN_UNKNOWN_COLORS)
    rng = np.random.default_rng(0)
    for held in (False, True):
        q = unseen_word_question(PAIR, rng, held)
        assert q.answer is None and q.qtype == "unknown"
        assert any(w in q.text.lower() for w in (*UNSEEN_NOUNS, *UNSEEN_COLORS)), q.text
    assert unknown_question(PAIR, rng).answer is None


def test_canonical_captions_parse_back_to_the_whole_scene() -> None:
    for i in range(300):
        scene = syn.example("test", i, size=8).scene
        text = canonical_caption(scene)
        claim = parse_caption(text)
        assert claim == syn.full_claim(scene) or (
            claim is not None and syn.claim_true(claim, scene)
            and names_every_object(claim, scene) and claim.background == scene.background)
        assert decode_caption(encode_caption(text)) == text
    assert canonical_caption(PAIR) == (
        "a small red circle left of a large blue square on a teal background")
    assert all(w in CAPTION_WORDS for w in canonical_caption(PAIR).split())


@pytest.mark.parametrize("text", ["a red", "red circle blue", "a circle left of",
                                  "an elephant", "a red circle on a pink background", ""])
def test_parser_rejects_what_is_not_a_sentence_of_the_grammar(text: str) -> None:
    assert parse_caption(text) is None


def test_parser_reads_training_phrasings() -> None:
    claim = parse_caption("there is a big red circle to the left of a blue square")
    assert claim == syn.Claim((syn.ObjDesc("circle", "red", "large"),
                               syn.ObjDesc("square", "blue", None)), "left of")
    assert parse_caption("on a navy background, a small star").background == "navy"
    false = parse_caption("a small red circle right of a large blue square")
    assert false is not None and not syn.claim_true(false, PAIR)
