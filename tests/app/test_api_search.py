"""Text->image, image->image, image->caption and composed search through the real model.

The bundled model may be untrained when these run, so every ranking assertion here holds for any
encoder: an exact copy of a stored image scores ~1 against it, a re-encoded copy of the same scene
lands nearest its original, and a query with k = collection size returns the whole collection.
Quality of the trained ranking is tested in tests/models.
"""

from __future__ import annotations

from typing import Any

import pytest
from api_support import (
    API,
    Gallery,
    encode,
    hit_ids,
    scene,
    scene_png,
    search_file,
    search_text,
    upload,
)
from fastapi.testclient import TestClient
from http_checks import assert_error

HIT_FIELDS = {"id", "score", "match", "caption", "tags", "file_url"}
TEXT_HIT_FIELDS = HIT_FIELDS | {"original_name", "vector_rank", "keyword_rank"}  # text only


def assert_hits_well_formed(results: dict[str, Any], gallery: Gallery) -> None:
    text = "mode" in results
    assert set(results) == {"hits", "took_ms", "reranked", "fusion"} | (
        {"mode", "filtered"} if text else set())
    assert isinstance(results["took_ms"], float) and results["took_ms"] >= 0
    stored = {it["id"]: it for it in gallery.items.values()}
    ids = hit_ids(results)
    assert len(ids) == len(set(ids)), "a hit is repeated"
    for hit in results["hits"]:
        assert set(hit) == (TEXT_HIT_FIELDS if text else HIT_FIELDS)
        item = stored[hit["id"]]
        assert (hit["caption"], hit["tags"], hit["file_url"]) == (
            item["caption"], item["tags"], item["file_url"])
        assert -1.01 <= hit["score"] <= 1.01
    if not results["reranked"]:
        scores = [h["score"] for h in results["hits"]]
        assert scores == sorted(scores, reverse=True)
        assert all(h["match"] is None for h in results["hits"])


def stored_tags(gallery: Gallery, item_id: int) -> list[str]:
    return next(it["tags"] for it in gallery.items.values() if it["id"] == item_id)


# ---- text -> image ------------------------------------------------------------------------------

def test_text_search_returns_k_well_formed_hits(gallery: Gallery) -> None:
    for k in (1, 5, gallery.size):
        results = search_text(gallery.client, scene(3).caption, k=k, rerank=False)
        assert len(results["hits"]) == k
        assert results["reranked"] is False
        assert_hits_well_formed(results, gallery)
    default = search_text(gallery.client, "a blue star")
    assert len(default["hits"]) == 10


def test_text_search_finds_each_caption_within_the_collection(gallery: Gallery) -> None:
    for i in (0, 7, 19):
        ids = hit_ids(search_text(gallery.client, scene(i).caption, k=gallery.size))
        assert gallery.id_of(i) in ids


def test_text_search_tag_filter(gallery: Gallery) -> None:
    results = search_text(gallery.client, scene(2).caption, k=gallery.size, tags=["odd"])
    odd = {it["id"] for it in gallery.items.values() if "odd" in it["tags"]}
    assert set(hit_ids(results)) == odd
    assert all("odd" in h["tags"] for h in results["hits"])
    both = search_text(gallery.client, "anything", k=50, tags=["odd", "even"])
    assert both["hits"] == []
    none = search_text(gallery.client, "anything", tags=["no-such-tag"])
    assert none["hits"] == []
    # tags were stored trimmed and lower-cased; a filter written otherwise still matches
    shouted = search_text(gallery.client, "anything", k=gallery.size, tags=[" ODD ", "Gallery"])
    assert set(hit_ids(shouted)) == odd


def test_rerank_flag(gallery: Gallery) -> None:
    info = gallery.client.get(f"{API}/info").json()
    query = scene(5).caption
    plain = search_text(gallery.client, query, k=5, rerank=False)
    assert plain["reranked"] is False
    reranked = search_text(gallery.client, query, k=5, rerank=True)
    assert reranked["reranked"] is True
    assert reranked["fusion"] == ("attention" if info["has_fusion"] else "late")
    assert len(reranked["hits"]) == 5
    assert_hits_well_formed(reranked, gallery)
    for hit in reranked["hits"]:
        assert isinstance(hit["match"], float) and 0.0 <= hit["match"] <= 1.0
    # whatever the blend's weights, a hit better on both the cosine and the match probability
    # is never ranked below one worse on both (the order itself: test_search_outcomes.py)
    hits = reranked["hits"]
    for i, above in enumerate(hits):
        for below in hits[i + 1:]:
            assert not (below["score"] > above["score"] and below["match"] > above["match"]), \
                (above, below)
    # the default re-ranks exactly when the model has trained fusion heads
    assert search_text(gallery.client, query)["reranked"] is info["has_fusion"]


@pytest.mark.parametrize("query", ["", "   ", "\n\t ", "\x00", " \x00 \x00 "])
def test_empty_or_blank_query_is_422(gallery: Gallery, query: str) -> None:
    resp = gallery.client.post(f"{API}/search/text", json={"query": query})
    assert_error(resp, 422, "validation_error")


@pytest.mark.parametrize("query", [
    "red circle " * 1000,  # 11,000 characters: truncated to the model's context, not refused
    "🔴 a red circle 🟦 next to a blue square ✨",
    "a red\x00 circle",  # NUL is replaced, the rest still searches
    "un cercle rouge à gauche d'un carré — ñ 中文",
])
def test_odd_queries_still_search(gallery: Gallery, query: str) -> None:
    results = search_text(gallery.client, query, k=3, rerank=False)
    assert len(results["hits"]) == 3
    assert_hits_well_formed(results, gallery)


@pytest.mark.parametrize("body", [
    {"query": "x", "k": 0},
    {"query": "x", "k": -1},
    {"query": "x", "k": 10**6},
    {"query": "x", "k": "ten"},
    {"query": "x", "k": 2.5},
    {"query": "x", "tags": "odd"},
    {"query": "x", "rerank": "maybe"},
    {"query": "x", "unknown": 1},
    {"query": 42},
    {"query": None},
    {"query": "x" * 100_001},
    {"k": 3},
    {},
])
def test_bad_text_search_fields_are_422(gallery: Gallery, body: dict[str, Any]) -> None:
    resp = gallery.client.post(f"{API}/search/text", json=body)
    assert_error(resp, 422, "validation_error")


def test_text_search_body_must_be_json(gallery: Gallery) -> None:
    c = gallery.client
    resp = c.post(f"{API}/search/text", content=b"{not json",
                  headers={"content-type": "application/json"})
    assert resp.status_code in (400, 422)
    assert_error(resp, resp.status_code)
    assert_error(c.post(f"{API}/search/text", json=["query"]), 422)


# ---- image -> image -----------------------------------------------------------------------------

def test_image_search_by_id_excludes_itself(gallery: Gallery) -> None:
    target = gallery.id_of(4)
    resp = gallery.client.post(f"{API}/search/image", json={"image_id": target, "k": 5})
    assert resp.status_code == 200, resp.text
    results = resp.json()
    assert len(results["hits"]) == 5 and target not in hit_ids(results)
    assert_hits_well_formed(results, gallery)
    everything = gallery.client.post(f"{API}/search/image",
                                     json={"image_id": target, "k": 1000}).json()
    assert set(hit_ids(everything)) == {it["id"] for it in gallery.items.values()} - {target}


def test_image_search_by_file_puts_the_same_image_first(gallery: Gallery) -> None:
    results = search_file(gallery.client, scene_png(11), k=3)
    assert hit_ids(results)[0] == gallery.id_of(11)
    assert results["hits"][0]["score"] > 0.999
    assert_hits_well_formed(results, gallery)


def test_reencoded_copy_finds_its_original_first(client: TestClient) -> None:
    """Image->image by id of the same scene stored again as JPEG: the PNG original comes first."""
    originals = upload(client, *[scene_png(i) for i in range(12)])
    (copy,) = upload(client, encode(scene(6).image, "JPEG", quality=95))
    assert copy["duplicate"] is False
    resp = client.post(f"{API}/search/image", json={"image_id": copy["id"], "k": 3})
    assert resp.status_code == 200, resp.text
    assert hit_ids(resp.json())[0] == originals[6]["id"]


def test_image_search_multipart_fields(gallery: Gallery) -> None:
    results = search_file(gallery.client, scene_png(8), k=4, tags="even")
    assert len(results["hits"]) == 4
    assert all("even" in h["tags"] for h in results["hits"])
    assert hit_ids(results)[0] == gallery.id_of(8)  # scene 8 is even


def test_image_to_captions(gallery: Gallery) -> None:
    c = gallery.client
    captioned = {it["id"] for it in gallery.items.values() if it["caption"]}
    uncaptioned = {it["id"] for it in gallery.items.values() if not it["caption"]}
    assert uncaptioned

    by_file = search_file(c, scene_png(9), target="captions", k=1000)
    assert set(hit_ids(by_file)) == captioned  # only items with a caption answer
    assert all(h["caption"] for h in by_file["hits"])
    assert_hits_well_formed(by_file, gallery)

    me = gallery.id_of(9)
    by_id = c.post(f"{API}/search/image",
                   json={"image_id": me, "target": "captions", "k": 5}).json()
    assert len(by_id["hits"]) == 5 and me not in hit_ids(by_id)
    assert all(h["caption"] for h in by_id["hits"])

    # the tag filter still yields k hits when enough captioned items carry the tag
    odd = c.post(f"{API}/search/image",
                 json={"image_id": me, "target": "captions", "k": 5, "tags": ["odd"]}).json()
    assert len(odd["hits"]) == 5 and all("odd" in h["tags"] for h in odd["hits"])
    odd_captioned = {i for i in captioned if "odd" in stored_tags(gallery, i)}
    every_odd = search_file(c, scene_png(9), target="captions", k=1000, tags="odd")
    assert set(hit_ids(every_odd)) == odd_captioned


def test_image_search_errors(gallery: Gallery) -> None:
    c = gallery.client
    assert_error(c.post(f"{API}/search/image", json={"image_id": 99_999}), 404, "not_found")
    for body in ({}, {"image_id": 0}, {"image_id": "one"}, {"image_id": 1, "k": 0},
                 {"image_id": 1, "target": "videos"}, {"image_id": 1, "extra": True}):
        assert_error(c.post(f"{API}/search/image", json=body), 422, "validation_error")
    assert_error(c.post(f"{API}/search/image", json=[1]), 422, "validation_error")
    assert_error(c.post(f"{API}/search/image", content=b"{", headers={
        "content-type": "application/json"}), 400, "bad_json")
    assert_error(c.post(f"{API}/search/image", content=b"image_id=1", headers={
        "content-type": "text/plain"}), 415, "unsupported_media_type")
    assert_error(c.post(f"{API}/search/image", files={"other": ("q.png", scene_png(0))}),
                 400, "no_file")
    assert_error(c.post(f"{API}/search/image", files={"file": ("q.png", b"not an image")}),
                 400, "bad_image")
    assert_error(c.post(f"{API}/search/image", files={"file": ("q.png", scene_png(0))},
                        data={"k": "0"}), 422, "validation_error")


# ---- composed -----------------------------------------------------------------------------------

def test_composed_by_id_and_text(gallery: Gallery) -> None:
    ref = gallery.id_of(12)
    resp = gallery.client.post(f"{API}/search/composed", json={
        "image_id": ref, "text": "the same scene but the objects are blue", "k": 6})
    assert resp.status_code == 200, resp.text
    results = resp.json()
    assert len(results["hits"]) == 6 and ref not in hit_ids(results)
    assert_hits_well_formed(results, gallery)


def test_composed_by_file_and_text(gallery: Gallery) -> None:
    resp = gallery.client.post(
        f"{API}/search/composed", files={"file": ("ref.png", scene_png(13), "image/png")},
        data={"text": "make the background teal", "k": "4", "tags": "gallery, odd"})
    assert resp.status_code == 200, resp.text
    results = resp.json()
    assert len(results["hits"]) == 4
    assert all({"gallery", "odd"} <= set(h["tags"]) for h in results["hits"])
    assert_hits_well_formed(results, gallery)


def test_composed_errors(gallery: Gallery) -> None:
    c = gallery.client
    ref = gallery.id_of(0)
    for body in ({"image_id": ref}, {"image_id": ref, "text": ""},
                 {"image_id": ref, "text": "  "}, {"text": "blue"},
                 {"image_id": ref, "text": "blue", "k": 1001}):
        assert_error(c.post(f"{API}/search/composed", json=body), 422, "validation_error")
    no_text = c.post(f"{API}/search/composed", files={"file": ("r.png", scene_png(0))})
    assert_error(no_text, 422, "validation_error")
    assert_error(c.post(f"{API}/search/composed", json={"image_id": 99_999, "text": "blue"}),
                 404, "not_found")
    assert_error(c.post(f"{API}/search/composed", data={"text": "blue"},
                        files={"file": ("r.png", b"\x89PNG\r\n\x1a\n broken")}), 400)


def test_file_urls_follow_the_root_path(client: TestClient) -> None:
    """Hit and item file URLs carry the prefix the app is served under (a proxy's root path),
    per request, and each one fetches that item's bytes."""
    png = scene_png(4)
    (item,) = upload(client, png, caption="a scene")
    assert item["file_url"] == f"{API}/images/{item['id']}/file"
    proxied = TestClient(client.app, root_path="/photos")
    for c, prefix in ((proxied, "/photos"), (client, "")):
        hits = search_text(c, "a scene", k=1, rerank=False)["hits"]
        assert hits[0]["file_url"] == f"{prefix}{API}/images/{item['id']}/file"
        listed = c.get(f"{API}/images/{item['id']}").json()
        assert listed["file_url"] == hits[0]["file_url"]
    assert client.get(f"{API}/images/{item['id']}/file").content == png
