"""What a user sees from each kind of search, in a gallery larger than k, judged by scene graphs.

Runs twice: in process through the ASGI app, and against `fusion-search serve` over real HTTP.
The right answers come from tests/app/outcome_world.py (which scene a caption is true of, which
scene a modification describes, where an object lies); none is computed with the service's own
ranking code. Each check below fails when the service's use of the model is broken on purpose
(docs/testing.md lists the mutations and the mutation score).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from api_support import make_settings, serve
from fastapi.testclient import TestClient
from outcome_world import (
    API,
    Http,
    World,
    build_world,
    ids,
    object_cells,
    say,
    search,
    upload_world,
)

from app.main import create_app
from models import synthetic as syn
from models.encoder import RERANK_COS, RERANK_MATCH

K = 5
FUSION_JSON = Path(__file__).resolve().parents[2] / "models" / "weights" / "fusion-tiny.fusion.json"


@pytest.fixture(scope="module", params=["asgi", "server"])
def world(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Http, World]]:
    root = tmp_path_factory.mktemp(f"outcomes-{request.param}")
    built = build_world()
    if request.param == "asgi":
        with TestClient(create_app(make_settings(root / "data"))) as client:
            upload_world(client, built)
            yield client, built
        return
    with serve(root / "data", root / "server.log") as server, \
            httpx.Client(base_url=server.url, timeout=120) as client:
        upload_world(client, built)
        yield client, built


def test_the_gallery_is_larger_than_k_and_each_caption_is_true_of_one_image(
        world: tuple[Http, World]) -> None:
    client, w = world
    info = client.get(f"{API}/info").json()
    assert info["items"] == len(w.entries) > 10 * K
    assert info["has_fusion"] is True  # the bundled model: re-rank, compose and explain are real
    for entry in w.entries:
        claim = syn.full_claim(entry.scene)
        assert [e.scene for e in w.entries if syn.claim_true(claim, e.scene)] == [entry.scene]


def test_text_search_puts_the_described_scene_first(world: tuple[Http, World]) -> None:
    client, w = world
    for entry in w.entries:
        if entry.group == "pair":
            continue  # twins differ only in where things are: test_rerank_... below
        hits = search(client, "text", query=entry.caption, k=K, rerank=False)
        assert len(hits) == K
        assert hits[0]["id"] == w.id_of(entry.scene), (entry.caption, hits[0]["caption"])
        assert hits[0]["caption"] == entry.caption and hits[0]["match"] is None


def test_rerank_puts_the_true_scene_above_its_swapped_twin(world: tuple[Http, World]) -> None:
    """The twins hold the same objects with their places swapped, so the dual encoder's cosine
    can barely tell them apart; the attention head's match probability must, and re-ranking
    must follow it. (The bundled dual encoder separates most of these clean twins by itself;
    the gallery holds one it ranks the wrong way round, found with the bundled weights.)"""
    client, w = world
    cosine_wrong, compared = [], 0
    for pair in w.pairs:
        true_id, twin_id = w.id_of(pair.true), w.id_of(pair.twin)
        plain = ids(search(client, "text", query=pair.caption, k=K, rerank=False))
        if twin_id in plain and (true_id not in plain
                                 or plain.index(twin_id) < plain.index(true_id)):
            cosine_wrong.append(pair.caption)
        hits = search(client, "text", query=pair.caption, k=K, rerank=True)
        order = ids(hits)
        assert order[0] == true_id, (pair.caption, order, true_id, twin_id)
        match = {h["id"]: h["match"] for h in hits}
        assert all(0.0 <= m <= 1.0 for m in match.values())
        if twin_id in match:  # else the cosine alone put the twin below the top K
            compared += 1
            assert match[true_id] > match[twin_id], (pair.caption, match)
        # the page shows this probability on the hit and again under "why this hit": one figure
        for item_id in {true_id, twin_id} & set(match):
            why = client.post(f"{API}/explain", json={"image_id": item_id, "text": pair.caption})
            assert why.status_code == 200, why.text
            assert why.json()["probability"] == pytest.approx(match[item_id], abs=2e-3)
    # Without such a case re-ranking could be switched off and this test would not notice.
    assert cosine_wrong, "the gallery needs a twin that the cosine alone ranks first"
    assert compared >= len(w.pairs) // 2, compared


def test_rerank_order_is_the_documented_blend_of_cosine_and_raw_match_logit(
        world: tuple[Http, World]) -> None:
    """Hits come in the order of RERANK_COS * cosine + RERANK_MATCH * raw match logit (the
    published weights, models/encoder.py), the raw logit read back from the shown, calibrated
    probability: match = sigmoid(raw / T + b), with T and b from the bundled heads' JSON.
    Calibration must not change the order."""
    client, w = world
    calibration = json.loads(FUSION_JSON.read_text()).get("calibration", {})
    temperature, bias = calibration.get("temperature", 1.0), calibration.get("bias", 0.0)
    checked = 0
    for entry in w.entries[::2]:
        hits = search(client, "text", query=entry.caption, k=20, rerank=True)
        blend = [RERANK_COS * h["score"] + RERANK_MATCH * temperature * (_logit(h["match"]) - bias)
                 for h in hits]
        assert all(a >= b - 1e-3 for a, b in zip(blend, blend[1:], strict=False)), \
            (entry.caption, blend)
        checked += len(hits)
    assert checked == 20 * len(w.entries[::2])


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def test_composed_search_finds_the_modified_scene(world: tuple[Http, World]) -> None:
    client, w = world
    firsts: dict[int, set[int]] = {}
    for mod in w.modifications:
        ref = w.id_of(mod.reference)
        resp = client.post(f"{API}/search/composed",
                           json={"image_id": ref, "text": mod.text, "k": K})
        assert resp.status_code == 200, resp.text
        assert resp.json()["reranked"] is False  # composed queries are not re-ranked
        hits = resp.json()["hits"]
        assert ref not in ids(hits)
        assert hits[0]["id"] == w.id_of(mod.target), (mod.text, w.entry_of(hits[0]["id"]))
        firsts.setdefault(ref, set()).add(hits[0]["id"])
    for ref, found in firsts.items():
        # each reference has several modifications, each with its own answer; an image search
        # from the same reference has one first hit, so it can be right for at most one of them
        texts = [m for m in w.modifications if w.id_of(m.reference) == ref]
        assert len(found) == len(texts) >= 5
        plain = search(client, "image", image_id=ref, k=K)
        assert sum(plain[0]["id"] == w.id_of(m.target) for m in texts) <= 1


def test_composed_search_with_an_uploaded_reference(world: tuple[Http, World]) -> None:
    client, w = world
    mod = w.modifications[0]
    reference = next(e for e in w.entries if e.scene == mod.reference)
    resp = client.post(f"{API}/search/composed",
                       files={"file": ("ref.png", reference.png, "image/png")},
                       data={"text": mod.text, "k": str(K)})
    assert resp.status_code == 200, resp.text
    hits = resp.json()["hits"]
    # the uploaded copy is not excluded, but the modification must beat it
    assert hits[0]["id"] == w.id_of(mod.target), mod.text


def _mass_on(grid: list[list[float]], cells: np.ndarray) -> float:
    weights = np.asarray(grid, np.float64)
    assert weights.shape == cells.shape and weights.min() >= 0 and weights.sum() > 0
    return float(weights[cells].sum() / weights.sum())


def test_explain_prefers_the_true_caption_and_looks_at_the_object(
        world: tuple[Http, World]) -> None:
    client, w = world
    singles = [e for e in w.entries if e.group == "single" and e.scene.objects[0].size == "small"]
    assert len(singles) >= 6
    for entry in singles[:8]:
        item_id = w.id_of(entry.scene)
        claim = syn.full_claim(entry.scene)
        twin = syn.swap_attributes(claim, entry.scene)
        assert twin is not None and not syn.claim_true(twin, entry.scene)
        right = client.post(f"{API}/explain", json={"image_id": item_id, "text": entry.caption})
        wrong = client.post(f"{API}/explain", json={"image_id": item_id, "text": say(twin)})
        assert right.status_code == wrong.status_code == 200, right.text  # never 409 here
        r, f = right.json(), wrong.json()
        assert r["probability"] > f["probability"], (entry.caption, say(twin), r, f)
        cells = object_cells(entry.scene, r["rows"])
        assert (r["rows"], r["cols"]) == (8, 8) and cells.any()
        share = _mass_on(r["grid"], cells)
        # the object covers a few percent of the cells; its attention share is several times that
        assert share >= 3 * cells.mean(), (entry.caption, share, cells.mean())


@pytest.mark.parametrize("tag", ["pair", "warm", "compose"])
def test_a_tag_filter_never_returns_an_untagged_item(world: tuple[Http, World], tag: str) -> None:
    client, w = world
    tagged = w.with_tag(tag)
    assert 0 < len(tagged) < len(w.entries)
    # queries whose best answers lie outside the tag, so the filter has to do the work
    outside = next(e for e in w.entries if tag not in e.tags)
    ref = w.id_of(outside.scene)
    for k in (3, 1000):
        searches = {
            "text": search(client, "text", query=outside.caption, k=k, tags=[tag]),
            "text re-ranked": search(client, "text", query=outside.caption, k=k, tags=[tag],
                                     rerank=True),
            "image": search(client, "image", image_id=ref, k=k, tags=[tag]),
            "captions": search(client, "image", image_id=ref, k=k, tags=[tag],
                               target="captions"),
            "composed": search(client, "composed", image_id=ref, text="make it blue", k=k,
                               tags=[tag]),
        }
        for name, hits in searches.items():
            found = set(ids(hits))
            assert found <= tagged, (name, k, found - tagged)
            assert all(tag in h["tags"] for h in hits), name
            assert len(hits) == min(k, len(tagged)), (name, k, len(hits))
            if k >= len(tagged):
                assert found == tagged, (name, tagged - found)

