"""The match that re-ranking runs (``models.folded_match.FoldedMatch``: weights folded once,
patches standardised once, each head's query and key projections as one matrix, its value and
output projections as another) gives the logits training's full computation gives, for random
weights of every depth and for the bundled model in the precision it serves in; and folding
leaves the head that training, composition and explanations use as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import load_model, synthetic
from models.folded_match import FoldedMatch
from models.fusion import AttentionFusion, Batch, FusionConfig


def _batch(n: int, length: int, one_text: bool) -> Batch:
    gen = torch.Generator().manual_seed(length)
    if one_text:
        eot = torch.tensor([length - 2]).expand(n)
        text = torch.randn(1, length, 32, generator=gen).expand(n, -1, -1)
        pad = (torch.arange(length)[None] > eot[:1, None]).expand(n, -1)
    else:  # texts of different lengths, padded
        eot = torch.randint(1, length, (n,), generator=gen)
        text = torch.randn(n, length, 32, generator=gen)
        pad = torch.arange(length)[None] > eot[:, None]
    emb = F.normalize(torch.randn(n, 16, generator=gen), dim=-1)
    text_emb = emb[:1].expand(n, -1) if one_text else emb.flip(0)
    return Batch(torch.randn(n, 16, 48, generator=gen), emb, text, pad, eot, text_emb)


def _feeds(b: Batch, one_text: bool) -> tuple[torch.Tensor, ...]:
    rows = slice(0, 1) if one_text else slice(None)  # one text goes in once, as serving does
    return (b.image_tokens, b.image_emb, b.text_tokens[rows], b.text_mask[rows],
            b.text_eot[rows], b.text_emb[rows])


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("length", [5, 40])
@pytest.mark.parametrize("one_text", [True, False])
@pytest.mark.parametrize("coords", [True, False])
def test_folded_equals_training_computation(depth: int, length: int, one_text: bool,
                                            coords: bool) -> None:
    torch.manual_seed(depth)
    cfg = FusionConfig(text_width=32, image_width=48, embed_dim=16, width=64, heads=4,
                       depth=depth, image_tokens=16 if coords else 0, coords=coords)
    head = AttentionFusion(cfg).eval()
    for block in head.blocks:  # non-trivial LayerNorm affines and biases, folded or not
        for m in block.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.normal_(m.weight, 1.0, 0.3)
                nn.init.normal_(m.bias, 0.0, 0.3)
            if isinstance(m, nn.MultiheadAttention):
                nn.init.normal_(m.in_proj_bias, std=0.3)
    b = _batch(7, length, one_text)
    with torch.enable_grad():
        want = head.score(b).detach()
    with torch.inference_mode():
        got = FoldedMatch(head).eval()(*_feeds(b, one_text))
    assert got.shape == (7,)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bundled_match_in_its_precision(precision: str) -> None:
    """The served match agrees with the fp32 module on real scenes and captions (bf16: to
    0.02 in probability, the same best image), and the head itself stays fp32 and untouched."""
    model = load_model("fusion-tiny", precision=precision)
    assert model.fusion is not None
    before = {k: v.clone() for k, v in model.fusion.state_dict().items()}
    examples = [synthetic.example("test", i, size=64) for i in range(24)]
    emb, tok = model.encode_images_with_tokens([e.image for e in examples])
    for query in (examples[0].caption, examples[5].caption, "a small red circle"):
        served = model.match(tok, [query], embeddings=emb)
        with torch.enable_grad():
            b = model._fusion_batch(tok, emb, [query])
            module = model.calibrated(model.fusion.score("attention", b)).detach().numpy()
        tol = 2e-2 if precision == "bf16" else 1e-5
        np.testing.assert_allclose(served, module, atol=tol)
        assert int(np.argmax(served)) == int(np.argmax(module))
    after = model.fusion.state_dict()
    assert all(v.dtype == torch.float32 and torch.equal(v, after[k]) for k, v in before.items())
    grid = np.asarray(model.explain(tok[0], emb[0], examples[0].caption)["grid"])
    assert abs(grid.sum() - 1.0) < 1e-4  # explanations still run on the fp32 head
