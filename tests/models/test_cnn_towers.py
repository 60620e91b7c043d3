"""CNN image towers: patch tokens from the last feature map, trained heads, served end to end.

RN50 and convnext_tiny load with random weights at 64 px (their architecture as published, a
smaller input); the training-and-serving test uses tiny configs of the same two tower classes
(open_clip's ModifiedResNet and a timm ConvNeXt) so that it runs in seconds.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
from fastapi.testclient import TestClient

from app.cli import main as cli
from app.main import create_app
from app.settings import Settings
from models import FusionUnavailable, load_model
from models import synthetic as syn

API = "/api/v1"
TEXT = {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
TINY = {
    "tiny-rn": {"embed_dim": 64, "text_cfg": TEXT,
                "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16,
                               "patch_size": None}},
    "tiny-convnext": {"embed_dim": 64, "text_cfg": TEXT,
                      "vision_cfg": {"timm_model_name": "convnext_atto",
                                     "timm_model_pretrained": False, "timm_pool": "",
                                     "timm_proj": "linear", "image_size": 64}},
}


@pytest.mark.parametrize(("name", "width"), [("RN50", 1024), ("convnext_tiny", 768)])
def test_named_cnn_towers_encode_match_and_say_they_cannot_explain(name: str,
                                                                   width: int) -> None:
    model = load_model(name, image_size=64)  # random weights: no download
    info = model.info()
    assert info["has_fusion"] is False and info["fusion"] == "late"
    assert info["image_tokens"] == [4, width]  # the last map's 2 x 2 cells at 64 px
    exs = syn.examples("test", 3)
    emb, tok = model.encode_images_with_tokens([e.image for e in exs])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)
    assert tok.shape == (3, 4, width) and np.isfinite(tok).all()
    assert tok.std() > 0  # the cells differ: real features, not a constant
    txt = model.encode_texts([e.caption for e in exs])
    probs = model.match(tok, [e.caption for e in exs], embeddings=emb)
    np.testing.assert_allclose(probs, ((emb * txt).sum(-1) + 1) / 2, atol=1e-5)  # late fusion
    with pytest.raises(FusionUnavailable):
        model.explain(tok[0], emb[0], exs[0].caption)


@pytest.fixture(scope="module")
def tiny_configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("configs")
    for name, cfg in TINY.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return folder


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    syn.example("test", i).image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name", ["tiny-rn", "tiny-convnext"])
def test_cnn_backbone_trains_then_searches_reranks_composes_and_explains(
        name: str, tiny_configs: Path, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    assert cli(["train", "--backbone", name, "--encoder-steps", "2", "--fusion-steps", "2",
                "--robust-steps", "1", "--batch", "8", "--pool", "16", "--triplets", "8",
                "--work-dir", str(tmp_path / "run"), "--out", str(out),
                "--plot", str(tmp_path / "loss.png")]) == 0
    meta = json.loads((out / f"{name}.fusion.json").read_text())
    assert meta["config"]["image_tokens"] == 4  # heads read the CNN's 2 x 2 cells
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", model=name,  # type: ignore[call-arg]
                        pretrained=str(out / f"{name}.safetensors"),
                        fusion_weights=str(out / f"{name}.fusion.safetensors"), torch_threads=1)
    with TestClient(create_app(settings)) as client:
        info = client.get(f"{API}/info").json()
        assert info["model"] == name and info["has_fusion"] is True
        ids = []
        for i in range(6):
            resp = client.post(f"{API}/images", files=[("files", (f"{i}.png", _png(i),
                                                                   "image/png"))],
                               data={"caption": syn.example("test", i).caption})
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["items"][0]["id"])
        found = client.post(f"{API}/search/text", json={"query": "a red circle", "k": 6})
        assert found.status_code == 200, found.text
        body = found.json()
        assert body["reranked"] is True and sorted(h["id"] for h in body["hits"]) == sorted(ids)
        assert all(0.0 <= h["match"] <= 1.0 for h in body["hits"])
        composed = client.post(f"{API}/search/composed",
                               json={"image_id": ids[0], "text": "make it blue", "k": 3})
        assert composed.status_code == 200, composed.text
        assert ids[0] not in [h["id"] for h in composed.json()["hits"]]
        explained = client.post(f"{API}/explain", json={"image_id": ids[1], "text": "a star"})
        assert explained.status_code == 200, explained.text
        ex = explained.json()
        assert (ex["rows"], ex["cols"]) == (2, 2)
        assert sum(map(sum, ex["grid"])) == pytest.approx(1.0, abs=1e-3)  # attention weights
