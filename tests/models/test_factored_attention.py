"""Re-ranking's shortcuts at inference give what training's full computation gives: the
cross-attention in factored form (the same scores and attention maps as ``nn.MultiheadAttention``,
for the bundled heads on real images and captions and for random weights with biases), one
query's text rows computed once, the last block's end-of-text row alone, and a query encoded
once per request."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import load_model, synthetic
from models.fusion import AttentionFusion, Batch, FusionConfig, factored_cross_attention


def test_factored_equals_module_with_random_weights() -> None:
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(128, 4, batch_first=True).eval()
    nn.init.normal_(attn.in_proj_bias, std=0.2)
    nn.init.normal_(attn.out_proj.bias, std=0.2)
    q, kv = torch.randn(7, 9, 128), torch.randn(7, 65, 128)
    with torch.no_grad():
        ref, ref_w = attn(q, kv, kv, need_weights=True, average_attn_weights=True)
        out, w = factored_cross_attention(attn, q, kv, need_weights=True)
    assert w is not None
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(w, ref_w, atol=1e-6)


def test_rerank_scores_and_explanations_unchanged() -> None:
    model = load_model("fusion-tiny", precision="fp32")
    assert model.fusion is not None
    examples = [synthetic.example("test", i, size=64) for i in range(12)]
    emb, tok = model.encode_images_with_tokens([e.image for e in examples])
    query = examples[0].caption
    fast = model.match(tok, [query], embeddings=emb)  # inference mode: factored path
    with torch.enable_grad():  # the module path, as in training
        b = model._fusion_batch(tok, emb, [query])
        slow = model.calibrated(model.fusion.score("attention", b)).detach().numpy()
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    assert int(np.argmax(fast)) == int(np.argmax(slow))
    grid = np.asarray(model.explain(tok[0], emb[0], query)["grid"])
    assert grid.shape == (8, 8)
    assert abs(grid.sum() - 1.0) < 1e-4  # one attention distribution over the 64 patches


def _pairs(n: int, length: int, one_text: bool) -> Batch:
    """n (image, text) pairs: one text broadcast to every image (a re-rank's batch), or n texts
    of different lengths padded to ``length``."""
    gen = torch.Generator().manual_seed(length)
    if one_text:
        eot = torch.tensor([length - 2]).expand(n)
        text = torch.randn(1, length, 32, generator=gen).expand(n, -1, -1)
        pad = (torch.arange(length)[None] > eot[:1, None]).expand(n, -1)
    else:
        eot = torch.randint(1, length, (n,), generator=gen)
        text = torch.randn(n, length, 32, generator=gen)
        pad = torch.arange(length)[None] > eot[:, None]
    emb = F.normalize(torch.randn(n, 16, generator=gen), dim=-1)
    return Batch(torch.randn(n, 16, 48, generator=gen), emb, text, pad, eot, emb.flip(0))


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("length", [5, 40])  # 40: heads x length > width, the module's path
@pytest.mark.parametrize("one_text", [True, False])
def test_inference_readout_equals_training_readout(depth: int, length: int, one_text: bool
                                                   ) -> None:
    """At inference one broadcast text's rows are computed once until they meet the images, and
    the last block computes the end-of-text row alone: the same features and attention maps as
    the full computation training runs."""
    torch.manual_seed(depth)
    cfg = FusionConfig(text_width=32, image_width=48, embed_dim=16, width=64, heads=4,
                       depth=depth, image_tokens=16, coords=True)
    head = AttentionFusion(cfg).eval()
    b = _pairs(7, length, one_text)
    with torch.no_grad():
        fast, fast_w = head.readout(b, need_weights=True)
        fast_score = head.score(b)
    with torch.enable_grad():
        full, full_w = head.readout(b, need_weights=True)
        full_score = head.score(b)
    assert fast_w is not None and full_w is not None
    assert fast.shape == full.shape == (7, 64)
    assert torch.allclose(fast, full, atol=1e-5)
    assert torch.allclose(fast_w, full_w, atol=1e-6)
    assert torch.allclose(fast_score, full_score.detach(), atol=1e-5)


def test_encoded_queries_rerank_as_texts_do() -> None:
    """The service encodes a query once (``encode_queries``, batched with other requests'
    queries of other lengths) and re-ranks with those tokens: the same vectors and match
    probabilities as encoding the text again, alone."""
    model = load_model("fusion-tiny", precision="fp32")
    examples = [synthetic.example("test", i, size=64) for i in range(6)]
    emb, tok = model.encode_images_with_tokens([e.image for e in examples])
    texts = ["a red circle", examples[1].caption, "there is a big green star on the left of "
             "a small blue square, grey background"]
    encoded = model.encode_queries(texts)
    assert [q.text for q in encoded] == texts
    np.testing.assert_allclose(np.stack([q.vector for q in encoded]),
                               model.encode_texts(texts), atol=1e-5)
    for q in encoded:
        assert not bool(q.batch.pad.any())  # trimmed after its own end-of-text token
        np.testing.assert_allclose(model.match(tok, q, embeddings=emb),
                                   model.match(tok, [q.text], embeddings=emb), atol=1e-5)
