"""Re-ranking's cross-attention is computed in factored form at inference: the same scores and
attention maps as ``nn.MultiheadAttention`` (which training uses), for the bundled heads on real
images and captions, and for random weights with biases."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models import load_model, synthetic
from models.fusion import factored_cross_attention


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
