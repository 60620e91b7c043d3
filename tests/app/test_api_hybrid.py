"""Text search modes (vector, keyword, hybrid) and the relevance cut-off, through the API with the
real bundled model, SQLite (FTS5) and FAISS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import API, make_settings, scene, scene_png
from fastapi.testclient import TestClient

from app.main import create_app

N = 16
# metadata a user gave: file names and captions with people's names, no visual words
NAMES = {i: f"IMG_{2030 + i}.png" for i in range(N)}
CAPTIONS = {3: "drawn by Maria at school", 7: "Oskar's birthday card", 11: "for grandma Ilse"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp("hybrid")
    with TestClient(create_app(make_settings(data_dir))) as test_client:
        for i in range(N):
            data: dict[str, Any] = {"tags": "kids" if i in CAPTIONS else "misc"}
            if i in CAPTIONS:
                data["caption"] = CAPTIONS[i]
            resp = test_client.post(f"{API}/images", data=data,
                                    files={"files": (NAMES[i], scene_png(i), "image/png")})
            assert resp.status_code == 201, resp.text
            assert resp.json()["items"][0]["id"] == i + 1
        yield test_client


def _search(client: TestClient, query: str, **body: Any) -> dict[str, Any]:
    resp = client.post(f"{API}/search/text", json={"query": query, **body})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _ids(answer: dict[str, Any]) -> list[int]:
    return [h["id"] for h in answer["hits"]]


def test_default_is_vector_search_with_vector_ranks(client: TestClient) -> None:
    answer = _search(client, scene(5).caption, k=5)
    assert answer["mode"] == "vector"
    assert answer["filtered"] == 0
    assert [h["vector_rank"] for h in answer["hits"]] == [1, 2, 3, 4, 5]
    assert all(h["keyword_rank"] is None for h in answer["hits"])
    assert _ids(_search(client, scene(5).caption, k=5, mode="vector")) == _ids(answer)


def test_keyword_finds_a_file_name_a_caption_name_and_a_tag(client: TestClient) -> None:
    answer = _search(client, "IMG_2041", mode="keyword")
    assert _ids(answer) == [12]
    hit = answer["hits"][0]
    assert (hit["keyword_rank"], hit["vector_rank"]) == (1, None)
    assert hit["original_name"] == "IMG_2041.png"
    assert -1.0 <= hit["score"] <= 1.0 and hit["score"] != 0.0  # the image's real cosine
    assert answer["reranked"] is False
    assert _ids(_search(client, "maria", mode="keyword")) == [4]
    assert sorted(_ids(_search(client, "kids", mode="keyword"))) == [4, 8, 12]


def test_vector_alone_misses_the_file_name_hybrid_finds_it(client: TestClient) -> None:
    assert _ids(_search(client, "IMG_2041", k=1))[0] != 12 or pytest.fail(
        "the encoder read a file name: this test no longer shows what hybrid adds")
    answer = _search(client, "IMG_2041", k=5, mode="hybrid")
    assert _ids(answer)[0] == 12
    assert answer["hits"][0]["keyword_rank"] == 1
    assert answer["mode"] == "hybrid"
    assert any(h["vector_rank"] is not None for h in answer["hits"])
    assert answer["reranked"] is True
    assert all(h["match"] is not None for h in answer["hits"])  # the keyword-only hit too


def test_hybrid_name_plus_visual_words_picks_that_persons_image(client: TestClient) -> None:
    # "oskar" narrows to one image; the visual words alone would rank others first
    visual = scene(7).caption
    assert _ids(_search(client, f"Oskar {visual}", k=3, mode="hybrid"))[0] == 8


def test_hybrid_equals_vector_when_no_word_is_in_the_metadata(client: TestClient) -> None:
    query = "zzzz qqqq"  # neither a caption, tag nor file name word
    assert _search(client, query, mode="keyword")["hits"] == []
    assert _ids(_search(client, query, k=8, mode="hybrid")) == _ids(_search(client, query, k=8))


@pytest.mark.parametrize("query", ['"', "AND", "*", "NEAR(", 'IMG_2041"', "foo:bar", "名前 ☃",
                                   "'; DROP TABLE items;--"])
def test_any_text_is_a_valid_keyword_query(client: TestClient, query: str) -> None:
    for mode in ("keyword", "hybrid"):
        _search(client, query, mode=mode)


@pytest.mark.parametrize("query", ['"', "AND", "NEAR(", "foo:bar", 'IMG_2041"'])
def test_fts5_syntax_error_is_a_400_that_says_so(client: TestClient, query: str) -> None:
    resp = client.post(f"{API}/search/text",
                       json={"query": query, "mode": "keyword", "keyword_syntax": "fts5"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "bad_query"
    assert "FTS5 syntax" in error["message"] and "terms" in error["message"]


def test_fts5_syntax_runs_operators(client: TestClient) -> None:
    answer = _search(client, "tags: kids NOT maria", mode="keyword", keyword_syntax="fts5")
    assert sorted(_ids(answer)) == [8, 12]
    prefixed = _search(client, "IMG_204*", mode="keyword", keyword_syntax="fts5")
    assert sorted(_ids(prefixed)) == [11, 12, 13, 14, 15, 16]  # IMG_2040 .. IMG_2045


def test_cut_off_leaves_out_weak_hits_and_says_how_many(client: TestClient) -> None:
    query = scene(2).caption
    full = _search(client, query, k=10)
    assert all(h["match"] is not None for h in full["hits"])
    strict = _search(client, query, k=10, min_match=1.0)
    assert strict["hits"] == [] and strict["filtered"] == 10
    ordered = sorted(h["match"] for h in full["hits"])
    threshold = (ordered[4] + ordered[5]) / 2  # between two answers' (rounded) values
    kept = _search(client, query, k=10, min_match=threshold)
    assert kept["hits"] and all(h["match"] >= threshold for h in kept["hits"])
    assert kept["filtered"] == sum(1 for h in full["hits"] if h["match"] < threshold)
    by_score = _search(client, query, k=10, min_score=full["hits"][2]["score"])
    assert [h["id"] for h in by_score["hits"]] == [
        h["id"] for h in full["hits"] if h["score"] >= full["hits"][2]["score"]]
    assert _ids(_search(client, query, k=10, min_match=0.0)) == _ids(full)


def test_cut_off_applies_in_keyword_mode_too(client: TestClient) -> None:
    answer = _search(client, "kids", mode="keyword", min_match=1.0)
    assert answer["hits"] == [] and answer["filtered"] == 3


@pytest.mark.parametrize("body", [{"mode": "sql"}, {"min_match": 1.5}, {"min_match": -0.1},
                                  {"min_score": 2}, {"keyword_syntax": "regex"},
                                  {"min_match": "high"}])
def test_bad_search_options_are_422(client: TestClient, body: dict[str, Any]) -> None:
    resp = client.post(f"{API}/search/text", json={"query": "red", **body})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "validation_error"


def test_spec_documents_the_new_fields(client: TestClient, tmp_path: Path) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["components"]["schemas"]["TextSearch"]["properties"]
    assert body["mode"]["enum"] == ["vector", "keyword", "hybrid"]
    assert {"min_match", "min_score", "keyword_syntax"} <= set(body)
    hit = spec["components"]["schemas"]["TextHit"]["properties"]
    assert {"vector_rank", "keyword_rank"} <= set(hit)
    op = spec["paths"]["/api/v1/search/text"]["post"]
    assert list(op["requestBody"]["content"]) == ["application/json"]


def test_a_hit_shown_with_exactly_the_bound_sent_back_is_kept(client: TestClient) -> None:
    """Scores and match probabilities are shown rounded (6 decimals); a client that sends one
    back as min_score / min_match keeps that hit, whichever way the rounding went."""
    full = _search(client, scene(2).caption, k=10)
    for hit in full["hits"][:4]:
        for bound in ({"min_score": hit["score"]}, {"min_match": hit["match"]}):
            kept = _search(client, scene(2).caption, k=10, **bound)
            assert hit["id"] in _ids(kept), (bound, hit)
