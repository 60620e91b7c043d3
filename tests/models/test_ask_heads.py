"""The ask/describe model API (issue 16): what ``ask`` and ``describe`` return, the 409-worthy
HeadNotAvailable without heads, loading saved heads (and refusing heads of another backbone),
and the training command's resumable run on a tiny budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models import load_model
from models import synthetic as syn
from models.answer_heads import AskConfig, AskHeads, CaptionDecoder, DescribeConfig
from models.ask import answer_paths, bundled_answer_heads, load_ask
from models.describe_grammar import CAPTION_WORDS
from models.errors import HeadNotAvailable
from models.synthetic.questions import ANSWERS
from models.train_ask import AskTrainConfig, fit_temperature, run_answer_heads


@pytest.fixture(scope="module")
def model():
    m = load_model()
    m.attach_answer_heads(None, None)  # whatever is bundled: a model without these heads
    return m


@pytest.fixture(scope="module")
def tokens(model) -> np.ndarray:
    return model.image_tokens([syn.example("test", 0).image])[0]


def test_without_heads_ask_and_describe_say_how_to_train_them(model, tokens) -> None:
    assert model.info()["has_ask"] is False and model.info()["has_describe"] is False
    with pytest.raises(HeadNotAvailable, match="fusion-search train --only ask,describe"):
        model.ask(tokens, "what colour is the circle?")
    with pytest.raises(HeadNotAvailable, match="captioning"):
        model.describe(tokens)


def test_answer_dict_shape_and_unknown_questions_never_raise(model, tokens) -> None:
    torch.manual_seed(0)
    cfg = AskConfig(model.text_width, model.image_token_width, model.embed_dim,
                    model.num_image_tokens, len(ANSWERS))
    model.attach_answer_heads(AskHeads(cfg, ANSWERS), CaptionDecoder(
        DescribeConfig(model.image_token_width, model.num_image_tokens)))
    try:
        assert model.has_ask and model.info()["has_describe"]
        for q in ("what colour is the circle?", "", "what colour is the teapot?",
                  "x" * 500, "¿qué color tiene el círculo?"):
            out = model.ask(tokens, q)
            assert out["answer"] in ANSWERS
            assert 0.0 <= out["probability"] <= 1.0
            alts = out["alternatives"]
            assert len(alts) == 3 and out["answer"] not in {a["answer"] for a in alts}
            assert all(a["probability"] <= out["probability"] for a in alts)
            grid = np.asarray(out["grid"])
            assert grid.shape == (8, 8) and abs(grid.sum() - 1.0) < 1e-5 and grid.min() >= 0
        cap = model.describe(tokens)
        assert set(cap) == {"caption", "probability"} and 0.0 <= cap["probability"] <= 1.0
        assert all(w in CAPTION_WORDS for w in cap["caption"].split())
    finally:
        model.attach_answer_heads(None, None)


def test_temperature_fit_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 5)) * 2.0
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    targets = np.array([rng.choice(5, p=p) for p in probs])
    # logits three times too confident: the fit divides them by about three
    assert fit_temperature(true_logits * 3.0, targets) == pytest.approx(3.0, rel=0.1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[AskTrainConfig, dict]:
    work = tmp_path_factory.mktemp("ask-run")
    cfg = AskTrainConfig(work_dir=str(work), out=str(work / "weights"), pool=32, ask_steps=2,
                         describe_steps=2, batch=16, group=4, describe_batch=8, calibrate_n=8,
                         checkpoint_every=1, threads=1)
    return cfg, run_answer_heads(cfg)


def test_training_writes_heads_that_load_and_answer(tiny_run) -> None:
    cfg, result = tiny_run
    paths = answer_paths(Path(cfg.out), "fusion-tiny")
    assert result["ask"] == str(paths["ask"]) and result["describe"] == str(paths["describe"])
    meta = json.loads(paths["ask_config"].read_text())
    assert meta["answers"] == list(ANSWERS) and meta["calibration"]["fitted_on"] == "ood-val"
    assert meta["calibration"]["temperature"] > 0 and len(meta["backbone_sha256"]) == 64
    assert all(v.dtype == torch.float16 for v in load_file(str(paths["ask"])).values())
    m = load_model(ask=str(paths["ask"]), describe=str(paths["describe"]))
    assert m.info()["has_ask"] and m.info()["has_describe"]
    tok = m.image_tokens([syn.example("test", 1).image])[0]
    assert m.ask(tok, "how many objects are there?")["answer"] in ANSWERS
    assert isinstance(m.describe(tok)["caption"], str)


def test_training_resumes_from_its_checkpoints(tiny_run) -> None:
    cfg, _ = tiny_run
    cfg.ask_steps, cfg.only = 3, ("ask",)
    run_answer_heads(cfg)
    (ckpt,) = Path(cfg.work_dir).glob("heads_*/ask.pt")  # one folder per backbone
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 3 and len(state["losses"]) == 3  # two from before, one new
    with pytest.raises(ValueError, match="--only takes ask, describe"):
        run_answer_heads(AskTrainConfig(only=("ask", "compose")))


def test_heads_of_another_backbone_are_not_served(tiny_run, tmp_path, caplog) -> None:
    cfg, _ = tiny_run
    for p in answer_paths(Path(cfg.out), "fusion-tiny").values():
        shutil.copy(p, tmp_path / p.name)
    other = tmp_path / "other-backbone.safetensors"
    other.write_bytes(b"not the backbone the heads were trained on")
    assert bundled_answer_heads(tmp_path, "fusion-tiny", other) == (None, None)
    assert "trained on another backbone" in caplog.text
    ask = load_ask(tmp_path / "fusion-tiny.ask.safetensors")
    assert ask.answers == ANSWERS and set(ask.heads) == {"attention", "early", "late"}
