"""The model contract over open_clip: loading, encoding, tokens, fusion, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from models import load_model
from models import synthetic as syn
from models.encoder import bundled_paths, register_configs


@pytest.fixture(scope="module")
def model():
    return load_model()


def test_bundled_model_is_trained_with_fusion(model) -> None:
    backbone, fusion, _ = bundled_paths("fusion-tiny")
    assert backbone.is_file() and fusion.is_file()
    info = model.info()
    assert info["trained"] is True
    assert info["has_fusion"] is True
    assert info["dim"] == model.embed_dim == 128


def test_encoders_return_normalised_float32(model) -> None:
    exs = syn.examples("test", 5)
    emb, tok = model.encode_images_with_tokens([e.image for e in exs])
    assert emb.dtype == np.float32 and emb.shape == (5, model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert tok.dtype == np.float16
    assert tok.shape == (5, model.num_image_tokens, model.image_token_width)
    txt = model.encode_texts([e.caption for e in exs])
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(model.image_tokens([exs[0].image])[0], tok[0], atol=1e-2)


def test_any_image_size_and_mode_is_preprocessed(model) -> None:
    imgs = [Image.new("L", (300, 120), 200), Image.new("RGBA", (17, 90), (1, 2, 3, 4))]
    assert model.encode_images(imgs).shape == (2, model.embed_dim)


def test_preprocess_gives_open_clips_own_pixels(model) -> None:
    """The batch preprocess (resize, crop, normalise) equals open_clip's transform per image,
    whatever the size, aspect and mode."""
    register_configs()
    _, _, transform = open_clip.create_model_and_transforms("fusion-tiny")
    scene = syn.example("test", 3, size=256).image
    imgs = [scene.resize((300, 120)), scene.resize((90, 200)), scene.resize((64, 64)),
            scene.resize((257, 256)).convert("L"), scene.convert("RGBA")]
    got = model.preprocess(imgs).numpy()
    want = np.stack([transform(im.convert("RGB")).numpy() for im in imgs])
    assert got.shape == want.shape == (5, 3, *model.image_size)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_long_text_is_truncated_not_rejected(model) -> None:
    vec = model.encode_texts(["a red circle " * 2000, "\x00nul🙂", ""])
    assert vec.shape == (3, model.embed_dim) and np.isfinite(vec).all()


def test_match_prefers_the_true_caption_over_swapped_twins(model) -> None:
    rng = np.random.default_rng(1)
    wins = total = 0
    for i in range(200):
        ex = syn.example("test", 50_000 + i)
        if len(ex.scene.objects) != 2:
            continue
        claim = syn.full_claim(ex.scene)
        neg = syn.swap_attributes(claim, ex.scene)
        if neg is None:
            continue
        emb, tok = model.encode_images_with_tokens([ex.image])
        texts = [syn.caption_text(claim, rng), syn.caption_text(neg, rng)]
        p = model.match(np.repeat(tok, 2, 0), texts, embeddings=np.repeat(emb, 2, 0))
        wins += int(p[0] > p[1])
        total += 1
    assert total > 30
    assert wins / total >= 0.8  # measured 0.89 with the bundled weights (n = 95)


def test_compose_and_explain_shapes(model) -> None:
    ex = syn.example("test", 0, size=64)
    q = model.compose([ex.image], ["make it blue"])
    assert q.shape == (1, model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-4)
    emb, tok = model.encode_images_with_tokens([ex.image])
    out = model.explain(tok[0], emb[0], ex.caption)
    assert 0.0 <= out["probability"] <= 1.0
    grid = np.asarray(out["grid"])
    assert grid.shape == (out["rows"], out["cols"]) == (8, 8)
    assert abs(grid.sum() - 1.0) < 1e-3  # attention over patches is a distribution


def test_open_clip_checkpoint_file_loads_through_pretrained(tmp_path: Path) -> None:
    """A ViT-B-32 checkpoint saved by the test loads via open_clip's pretrained=<file> path."""
    register_configs()
    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-32").eval()
    path = tmp_path / "vit_b_32.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    m = load_model("ViT-B-32", pretrained=str(path), precision="fp32")
    assert m.trained and not m.has_fusion and m.embed_dim == 512
    img = syn.example("test", 1, size=224).image
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    _, preprocess, _ = open_clip.create_model_and_transforms("ViT-B-32")
    with torch.no_grad():
        want_i = ref.encode_image(preprocess(img)[None], normalize=True).numpy()
        want_t = ref.encode_text(tokenizer(["a red circle"]), normalize=True).numpy()
    got_i = m.encode_images([img])
    got_t = m.encode_texts(["a red circle"])
    assert float((want_i * got_i).sum()) > 0.999
    assert float((want_t * got_t).sum()) > 0.9999
    # no fusion weights: re-rank and composition fall back to late fusion
    emb = m.encode_images([img])
    assert m.match(np.zeros((1, 49, 768), np.float16), ["a red circle"], embeddings=emb).shape \
        == (1,)


def test_open_clip_local_dir_loads_with_its_weights(tmp_path: Path) -> None:
    """``local-dir:<folder>`` (an open_clip config and checkpoint, a user's own model) loads
    with those weights and says it is trained; a folder with the config only is untrained."""
    import json

    from models.encoder import CONFIG_DIR

    cfg = {**json.loads((CONFIG_DIR / "fusion-tiny.json").read_text()), "embed_dim": 96}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    name = f"local-dir:{tmp_path}"
    untrained = load_model(name, precision="fp32")
    assert not untrained.trained and untrained.embed_dim == 96
    torch.manual_seed(1)
    ref = open_clip.create_model(name).eval()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              str(tmp_path / "open_clip_model.safetensors"))
    m = load_model(name, precision="fp32")
    assert m.trained and m.info()["trained"] and m.embed_dim == 96
    with torch.no_grad():
        want = ref.encode_text(open_clip.get_tokenizer(name)(["a red circle"]), normalize=True)
    assert float((want.numpy() * m.encode_texts(["a red circle"])).sum()) > 0.9999


def test_match_is_the_calibrated_probability_and_rerank_order_ignores_calibration(
        model) -> None:
    import torch

    from models.encoder import rerank_scores

    assert model.temperature > 1.0  # fitted on ood-val (models/calibrate.py), bundled
    exs = syn.examples("test", 8)
    emb, tok = model.encode_images_with_tokens([e.image for e in exs])
    query = exs[0].caption
    probs = model.match(tok, [query], embeddings=emb)
    with torch.inference_mode():
        raw = model.match_logits(model._fusion_batch(tok, emb, [query])).numpy()
    bias = model.fusion.match_bias
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-(raw / model.temperature + bias))),
                               atol=1e-5)
    cos = (emb @ model.encode_texts([query])[0]).astype(np.float64)
    served = rerank_scores(cos, probs, model.temperature)
    uncalibrated = rerank_scores(cos, 1 / (1 + np.exp(-raw.astype(np.float64))))
    # the same scores up to one constant per query: the same order of hits
    np.testing.assert_allclose(served - uncalibrated, (served - uncalibrated)[0], atol=1e-3)
