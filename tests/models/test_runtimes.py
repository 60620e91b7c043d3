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
            "pairs": m.match(tok, [e.caption for e in examples], emb),
            "single": m.match(tok[:1], [longest(examples)], emb[:1])}


def longest(examples: list[syn.Example]) -> str:
    """The longest caption, twice over: longer than the text the match graph was traced with."""
    caption = max((e.caption for e in examples), key=len)
    return f"{caption}, {caption}"


def agreement(m: RetrievalModel, examples: list[syn.Example], ref: dict[str, np.ndarray]
              ) -> dict[str, float]:
    """Each part against fp32 torch on its own: the match on torch's image tokens and
    embeddings, so that an images part on another runtime (``auto`` may put it there within
    cosine 0.999) does not show up as the match graph's error."""
    emb, tok = m.encode_images_with_tokens([e.image for e in examples])
    texts = m.encode_texts([e.caption for e in examples])
    flat, flat_ref = tok.astype(np.float32).reshape(-1, tok.shape[-1]), ref["tok"].astype(
        np.float32).reshape(-1, tok.shape[-1])
    tok_cos = (flat * flat_ref).sum(-1) / (np.linalg.norm(flat, axis=-1)
                                           * np.linalg.norm(flat_ref, axis=-1))
    image_cos = float((emb * ref["emb"]).sum(-1).min())
    tok, emb = ref["tok"], ref["emb"]
    return {"image_cos": image_cos, "token_cos": float(tok_cos.min()),
            "text_cos": float((texts * ref["texts"]).sum(-1).min()),
            "match": float(np.abs(m.match(tok, [examples[0].caption], emb) - ref["match"]).max()),
            "pairs": float(np.abs(m.match(tok, [e.caption for e in examples], emb)
                                  - ref["pairs"]).max()),
            "single": float(np.abs(m.match(tok[:1], [longest(examples)], emb[:1])
                                   - ref["single"]).max())}


def test_onnxruntime_matches_torch_and_reuses_its_export(
        cache: Path, examples: list[syn.Example], reference: dict[str, np.ndarray]) -> None:
    need("onnxruntime")
    m = load_model(precision="fp32", runtime="onnxruntime", cache_dir=cache)
    info = m.info()
    assert (info["runtime"], info["precision"]) == ("onnxruntime", "fp32")
    assert info["runtime_reason"].startswith("onnxruntime as set")
    got = agreement(m, examples, reference)
    assert min(got["image_cos"], got["token_cos"], got["text_cos"]) >= 0.999, got
    # probabilities: one text for every image, a text per image, one long text and one image
    assert max(got["match"], got["pairs"], got["single"]) < 1e-3, got
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
    assert min(got["image_cos"], got["text_cos"]) >= 0.999, got
    assert got["token_cos"] >= (0.99 if expected == "bf16" else 0.999), got
    assert max(got["match"], got["single"]) < (2e-2 if expected == "bf16" else 1e-3), got


def test_auto_runs_each_part_where_it_is_fastest_by_the_margin() -> None:
    """Figures from docs/benchmarks.md#runtimes (AMD EPYC): a runtime takes a part only where it
    beats torch on it by MIN_SPEEDUP, the fastest such wins, and a failed cosine takes none."""
    from models.runtime_probe import pick_parts

    def cand(images: float, text: float, match: float | None = None, ok: bool = True
             ) -> dict[str, object]:
        ratios = {"images": images, "text": text} | ({} if match is None else {"match": match})
        return {"ok": ok, "ratios": ratios}

    # fusion-tiny: both runtimes win the query, ONNX Runtime by more; neither the match
    assert pick_parts({"onnxruntime fp32": cand(1.14, 2.56, 0.47),
                       "openvino fp32": cand(1.14, 1.85, 0.86)}) == {
        "images": None, "text": "onnxruntime fp32", "match": None}
    # ViT-B-32 (no fusion head): the query moves, ingest stays where it is as fast
    assert pick_parts({"onnxruntime fp32": cand(0.98, 3.27)}) == {
        "images": None, "text": "onnxruntime fp32"}
    assert pick_parts({"a": cand(1.2, 1.29, 1.0)}) == dict.fromkeys(
        ("images", "text", "match"))  # below the margin everywhere
    assert pick_parts({"a": cand(1.3, 1.0), "b": cand(2.0, 3.0, ok=False)}) == {
        "images": "a", "text": None}  # b is faster, but its embeddings drift
    assert pick_parts({}) == {}


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
    parts = m.info()["runtime_parts"]
    assert set(verdict["parts"]) == set(parts) == {"images", "text", "match"}
    for part, pick in verdict["parts"].items():  # whatever won a part, it won by the rule
        if pick is None:
            assert parts[part].startswith("torch"), parts
            continue
        assert parts[part] == f"{pick['runtime']} {pick['precision']}", parts
        winner = verdict["candidates"][f"{pick['runtime']} {pick['precision']}"]
        assert winner["ratios"][part] >= 1.3 and winner["cosine"] >= 0.999, winner
    got = agreement(m, examples, reference)
    # bf16 where the CPU has it (OpenVINO's hint, torch's autocast): the openvino test's bounds
    bf16 = {part: "bf16" in name for part, name in parts.items()}
    assert min(got["image_cos"], got["text_cos"]) >= 0.999, (got, parts)
    assert got["token_cos"] >= (0.99 if bf16["images"] else 0.999), (got, parts)
    assert max(got["match"], got["pairs"], got["single"]) < (2e-2 if bf16["match"] else 1e-3), \
        (got, parts)
    again = load_model(runtime="auto", cache_dir=cache)
    assert "recorded in" in again.info()["runtime_reason"]
    assert again.info()["runtime_parts"] == parts


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


def test_a_small_text_tower_runs_its_graph_on_one_thread() -> None:
    """fusion-tiny's text tower (0.8M multiply-adds per token) is per-operator overhead that a
    thread pool only adds to; ViT-B-32's (38M) is work worth splitting."""
    from models.runtimes import text_threads

    tiny, big = load_model("fusion-tiny"), load_model("ViT-B-32")
    assert (tiny.text_macs, big.text_macs) == (12 * 4 * 128**2, 12 * 12 * 512**2)
    assert text_threads(tiny.text_macs, 2) == 1
    assert text_threads(big.text_macs, 2) == 2
    assert text_threads(0, 2) == 2  # a tower whose size is unknown keeps every thread
