"""The bundled model exported to ONNX and run on ONNX Runtime and OpenVINO: the same vectors,
match scores and search results as torch, and ``auto`` that falls back to torch and says why."""

from __future__ import annotations

import importlib
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from models import ModelLoadError, RetrievalModel, load_model
from models import synthetic as syn

API = "/api/v1"


def need(module: str) -> None:
    """Skip where ``module`` is not installed; in CI (CI set) that is a failure."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing in CI (the test extra installs it): {exc}")
        pytest.skip(f"{module} not installed")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime-cache")


@pytest.fixture(scope="module")
def examples() -> list[syn.Example]:
    return syn.examples("test", 12)


@pytest.fixture(scope="module")
def reference(examples: list[syn.Example]) -> dict[str, np.ndarray]:
    """fp32 torch's outputs: image embeddings and tokens, text embeddings, match probabilities."""
    m = load_model(precision="fp32")
    emb, tok = m.encode_images_with_tokens([e.image for e in examples])
    texts = m.encode_texts([e.caption for e in examples])
    return {"emb": emb, "tok": tok, "texts": texts,
            "match": m.match(tok, [examples[0].caption], emb),
            "pairs": m.match(tok, [e.caption for e in examples], emb)}


def agreement(m: RetrievalModel, examples: list[syn.Example], ref: dict[str, np.ndarray]
              ) -> dict[str, float]:
    emb, tok = m.encode_images_with_tokens([e.image for e in examples])
    texts = m.encode_texts([e.caption for e in examples])
    return {"image_cos": float((emb * ref["emb"]).sum(-1).min()),
            "text_cos": float((texts * ref["texts"]).sum(-1).min()),
            "match": float(np.abs(m.match(tok, [examples[0].caption], emb) - ref["match"]).max()),
            "pairs": float(np.abs(m.match(tok, [e.caption for e in examples], emb)
                                  - ref["pairs"]).max())}


def test_onnxruntime_matches_torch_and_reuses_its_export(
        cache: Path, examples: list[syn.Example], reference: dict[str, np.ndarray]) -> None:
    need("onnxruntime")
    m = load_model(precision="fp32", runtime="onnxruntime", cache_dir=cache)
    info = m.info()
    assert (info["runtime"], info["precision"]) == ("onnxruntime", "fp32")
    assert info["runtime_reason"].startswith("onnxruntime as set")
    got = agreement(m, examples, reference)
    assert got["image_cos"] >= 0.999 and got["text_cos"] >= 0.999, got
    assert got["match"] < 1e-3 and got["pairs"] < 1e-3, got  # probabilities, one and many texts
    (folder,) = [p for p in cache.iterdir() if p.name.startswith("fusion-tiny-")]
    record = json.loads((folder / "export.json").read_text())
    assert record["graphs"] == ["image", "match", "text"]
    stamp = (folder / "image.onnx").stat().st_mtime_ns
    load_model(precision="fp32", runtime="onnxruntime", cache_dir=cache)
    assert (folder / "image.onnx").stat().st_mtime_ns == stamp  # same weights: not re-exported


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_openvino_matches_torch(cache: Path, examples: list[syn.Example],
                                reference: dict[str, np.ndarray], precision: str) -> None:
    need("openvino")
    m = load_model(precision=precision, runtime="openvino", cache_dir=cache)
    from models.precision import native_bf16

    expected = "bf16" if precision == "auto" and native_bf16() else "fp32"
    assert (m.info()["runtime"], m.info()["precision"]) == ("openvino", expected)
    got = agreement(m, examples, reference)
    assert got["image_cos"] >= 0.999 and got["text_cos"] >= 0.999, got
    assert got["match"] < (2e-2 if expected == "bf16" else 1e-3), got


@pytest.mark.parametrize(("images", "query", "match", "kept"), [
    (0.98, 3.27, None, True),   # ViT-B-32 on ONNX Runtime, AMD EPYC: ingest as fast, query 3x
    (1.08, 2.56, 0.47, False),  # fusion-tiny there: the re-rank's match twice as slow
    (0.85, 4.0, None, False),   # a fast query does not buy ingest 15% slower
    (1.2, 1.2, 1.2, False),     # faster everywhere, but by less than MIN_SPEEDUP
    (1.3, 1.3, 1.3, True),
])
def test_auto_keeps_a_runtime_only_when_it_wins_overall_and_loses_nowhere_much(
        images: float, query: float, match: float | None, kept: bool) -> None:
    from models.runtime_probe import fast_enough

    ratios = [images, query] + ([] if match is None else [match])
    assert fast_enough(ratios) is kept


def test_auto_without_runtimes_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch,
                                                   cache: Path) -> None:
    for module in ("onnxruntime", "openvino"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    m = load_model(runtime="auto", cache_dir=cache)
    assert m.info()["runtime"] == "torch"
    assert "neither onnxruntime nor openvino is installed" in m.info()["runtime_reason"]
    assert m.encode_texts(["a red circle"]).shape == (1, m.embed_dim)
    with pytest.raises(ModelLoadError, match="onnxruntime is not installed"):
        load_model(runtime="onnxruntime", cache_dir=cache)


def test_auto_records_its_verdict_for_this_cpu(cache: Path, examples: list[syn.Example],
                                                reference: dict[str, np.ndarray]) -> None:
    need("onnxruntime")
    m = load_model(runtime="auto", cache_dir=cache)
    reason = m.info()["runtime_reason"]
    assert reason.startswith("auto: ") and "probed at this first load" in reason, reason
    (record,) = cache.glob("fusion-tiny-*/auto.json")
    (verdict,) = json.loads(record.read_text()).values()
    assert verdict["runtime"] == m.info()["runtime"]
    if verdict["runtime"] != "torch":  # whichever won, it won by the rule
        winner = verdict["candidates"][f"{verdict['runtime']} {verdict['precision']}"]
        assert winner["speedup"] >= 1.3 and winner["cosine"] >= 0.999, winner
        got = agreement(m, examples, reference)
        assert got["image_cos"] >= 0.999 and got["text_cos"] >= 0.999, got
    again = load_model(runtime="auto", cache_dir=cache)
    assert "recorded in" in again.info()["runtime_reason"]
    assert again.info()["runtime"] == m.info()["runtime"]


def test_runtime_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="runtime"):
        Settings(_env_file=None, runtime="tensorrt")  # type: ignore[call-arg]


def _png(e: syn.Example) -> bytes:
    buf = io.BytesIO()
    e.image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def served(tmp_path: Path, cache: Path, examples: list[syn.Example]
           ) -> Iterator[dict[str, TestClient]]:
    need("onnxruntime")
    clients = {}
    for runtime in ("torch", "onnxruntime"):
        settings = Settings(_env_file=None, data_dir=tmp_path / runtime,  # type: ignore[call-arg]
                            runtime=runtime, runtime_cache=cache, torch_threads=1,
                            precision="fp32")
        client = TestClient(create_app(settings))
        client.__enter__()
        clients[runtime] = client
        files = [("files", (f"s{i}.png", _png(e), "image/png")) for i, e in enumerate(examples)]
        assert client.post(f"{API}/images", files=files).status_code == 201
    yield clients
    for client in clients.values():
        client.__exit__(None, None, None)


def test_search_through_onnxruntime_finds_what_torch_finds(
        served: dict[str, TestClient], examples: list[syn.Example]) -> None:
    info = served["onnxruntime"].get(f"{API}/info").json()
    assert info["runtime"] == "onnxruntime" and info["runtime_reason"], info
    assert served["torch"].get(f"{API}/info").json()["runtime"] == "torch"
    for e in examples[:4]:
        hits = {}
        for runtime, client in served.items():
            resp = client.post(f"{API}/search/text", json={"query": e.caption, "k": 3})
            assert resp.status_code == 200, resp.text
            hits[runtime] = resp.json()["hits"]
        assert hits["onnxruntime"][0]["id"] == hits["torch"][0]["id"], (e.caption, hits)
        assert hits["onnxruntime"][0]["score"] == pytest.approx(hits["torch"][0]["score"],
                                                                abs=1e-3)
