"""The text path stops at the longest text of the batch: same embeddings as open_clip's own
``encode_text`` over the full padded context (fp32, so any difference would be a bug, not
rounding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import load_model

TEXTS = [
    "a red circle",
    "a small blue square to the left of a large green triangle",
    "",
    "the same scene, but the circle is yellow and the square has moved above it",
    "émoji ✓ and ünïcode",
]
LONG = " ".join(["a red circle next to a blue square"] * 20)  # past any context length


@pytest.fixture(scope="module", params=["fusion-tiny", "ViT-B-32"])
def model(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    # ViT-B-32 without a pretrained tag: random weights, the real shapes (77 tokens, width 512)
    return load_model(request.param, precision="fp32", batch_size=8)


def plain(model, texts: list[str]) -> np.ndarray:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return F.normalize(model.clip.encode_text(model.tokenize(texts)), dim=-1).numpy()


@pytest.mark.parametrize("texts", [TEXTS, [TEXTS[0]], TEXTS + [LONG]],
                         ids=["batch", "single", "with-truncated"])
def test_trimmed_text_path_matches_open_clip(model, texts: list[str]) -> None:  # type: ignore[no-untyped-def]
    ours = model.encode_texts(texts)
    ref = plain(model, texts)
    assert ours.shape == ref.shape == (len(texts), model.embed_dim)
    cos = (ours * ref).sum(-1)
    assert cos.min() > 0.9999, cos


def test_short_batches_are_trimmed(model) -> None:  # type: ignore[no-untyped-def]
    ids = model.tokenize(TEXTS)
    longest = int(ids.argmax(-1).max()) + 1
    batch = model._texts_forward(ids)
    assert longest < model.context_length
    assert batch.tokens.shape[1] == longest


def test_direct_attention_blocks_equal_the_module_path(model) -> None:  # type: ignore[no-untyped-def]
    """The serving path calls the attention kernel itself; every token output (which the fusion
    heads read, not only the pooled embedding) equals open_clip's module path."""
    assert model._lean_text, "the plain open_clip text tower should take the direct path"
    ids = model.tokenize(TEXTS)
    ours = model._texts_forward(ids)
    model._lean_text = False
    try:
        ref = model._texts_forward(ids)
    finally:
        model._lean_text = True
    assert torch.allclose(ours.tokens, ref.tokens, atol=1e-5, rtol=1e-4)
    assert torch.equal(ours.eot, ref.eot)


def test_auto_precision_keeps_the_text_tower_faithful() -> None:
    """``auto`` may run the text tower in another precision than the image tower (whichever
    is quicker for one query, timed at load); either way the embeddings match fp32's."""
    auto = load_model("fusion-tiny")
    exact = load_model("fusion-tiny", precision="fp32")
    assert auto.text_dtype in (torch.float32, auto.dtype)
    assert next(auto.clip.visual.parameters()).dtype == auto.dtype
    assert auto.clip.token_embedding.weight.dtype == auto.text_dtype
    cos = (auto.encode_texts(TEXTS) * exact.encode_texts(TEXTS)).sum(-1)
    assert cos.min() > 0.999, cos
    img_cos = (auto.encode_images([_scene()]) * exact.encode_images([_scene()])).sum(-1)
    assert img_cos.min() > 0.99, img_cos


def _scene():  # type: ignore[no-untyped-def]
    from models import synthetic

    return synthetic.example("test", 0, size=64).image
