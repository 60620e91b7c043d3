"""/api/v1/ask and /api/v1/describe (+ /upload): the real app, SQLite, FAISS and bundled model.

Scenes are drawn from the synthetic world with a known scene graph, so every answer is known.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import API, Apps, make_settings
from fastapi.testclient import TestClient
from http_checks import assert_error

from app.main import create_app
from models import synthetic as syn
from models.describe_grammar import names_every_object, parse_caption
from models.encoder import bundled_paths

# Scenes drawn canonically (no jitter), one or two large objects far apart: no answer is a
# close call, so the trained heads must get every one right.
CLEAR_SCENES: dict[str, syn.Scene] = {
    "red circle": syn.Scene("gray", (syn.Obj("circle", "red", "large", 0.5, 0.5),)),
    "blue square left of yellow star": syn.Scene("beige", (
        syn.Obj("square", "blue", "large", 0.27, 0.5),
        syn.Obj("star", "yellow", "large", 0.73, 0.5))),
    "green triangle above white cross": syn.Scene("navy", (
        syn.Obj("triangle", "green", "large", 0.5, 0.27),
        syn.Obj("cross", "white", "large", 0.5, 0.73))),
}
# (scene, question, right answer)
QUESTIONS: list[tuple[str, str, str]] = [
    ("red circle", "what colour is the circle?", "red"),
    ("red circle", "what shape is the red object?", "circle"),
    ("red circle", "how many objects are there?", "1"),
    ("blue square left of yellow star", "what colour is the star?", "yellow"),
    ("blue square left of yellow star", "is the square left of the star?", "yes"),
    ("blue square left of yellow star", "is the star left of the square?", "no"),
    ("green triangle above white cross", "what shape is the white object?", "cross"),
    ("green triangle above white cross", "what colour is the background?", "navy"),
    ("green triangle above white cross", "what is above the cross?", "triangle"),
    ("blue square left of yellow star", "what is left of the star?", "square"),
    ("red circle", "what size is the circle?", "large"),
    ("red circle", "is there a blue square?", "no"),
]


Bundled = tuple[TestClient, dict[str, int]]  # the app, and the stored id of each clear scene


def png(scene: syn.Scene) -> bytes:
    buf = io.BytesIO()
    syn.render(scene, size=64).save(buf, format="PNG")
    return buf.getvalue()


def heads_ready(info: dict[str, Any]) -> bool:
    """Trained question-answering and captioning heads are bundled; in CI they must be."""
    ready = bool(info.get("has_ask")) and bool(info.get("has_describe"))
    if os.environ.get("CI") and not ready:
        pytest.fail("the bundled model has no ask/describe heads (models/weights/"
                    "fusion-tiny.{ask,describe}.safetensors)")
    return ready


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundled]:
    """An app with the bundled model and the clear scenes stored (read-only for the tests)."""
    data_dir = tmp_path_factory.mktemp("ask") / "data"
    with TestClient(create_app(make_settings(data_dir))) as client:
        ids = {}
        for name, scene in CLEAR_SCENES.items():
            resp = client.post(f"{API}/images", files={"files": (f"{name}.png", png(scene))})
            assert resp.status_code == 201, resp.text
            ids[name] = resp.json()["items"][0]["id"]
        yield client, ids


def ask(client: TestClient, image_id: int, question: str) -> dict[str, Any]:
    resp = client.post(f"{API}/ask", json={"image_id": image_id, "question": question})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def check_answer_shape(out: dict[str, Any]) -> None:
    assert isinstance(out["answer"], str) and out["answer"]
    assert 0.0 <= out["probability"] <= 1.0
    alts = out["alternatives"]
    assert len(alts) == 3
    answers = [out["answer"]] + [a["answer"] for a in alts]
    assert len(set(answers)) == 4, answers  # four different answers
    probs = [out["probability"]] + [a["probability"] for a in alts]
    assert probs == sorted(probs, reverse=True), probs
    assert sum(probs) <= 1.0 + 1e-6
    grid = out["grid"]
    assert len(grid) == out["rows"] and all(len(row) == out["cols"] for row in grid)
    assert out["rows"] * out["cols"] > 1
    assert min(min(row) for row in grid) >= 0.0
    assert abs(sum(sum(row) for row in grid) - 1.0) < 1e-3


def test_answers_questions_about_stored_scenes(bundled: Bundled) -> None:
    client, ids = bundled
    trained = heads_ready(client.get(f"{API}/info").json())
    if not trained:
        assert_error(client.post(f"{API}/ask", json={"image_id": ids["red circle"],
                                                     "question": "what colour is it?"}),
                     409, "not_available")
        return
    wrong = []
    for scene, question, right in QUESTIONS:
        out = ask(client, ids[scene], question)
        check_answer_shape(out)
        assert out["image_id"] == ids[scene] and out["question"] == question
        if out["answer"] != right:
            wrong.append((scene, question, out["answer"], right))
    # the bundled head answers 0.95 of in-distribution questions but relation yes/no ones only
    # 0.59 (docs/model-card.md): two misses in twelve are the model (this one reads the white
    # cross as a star and says the star is not left of the square), three would be the plumbing
    assert len(wrong) <= 2, wrong


def test_upload_gives_the_stored_images_answer(
        bundled: Bundled) -> None:
    client, ids = bundled
    if not heads_ready(client.get(f"{API}/info").json()):
        pytest.skip("no ask/describe heads bundled yet")
    scene = CLEAR_SCENES["blue square left of yellow star"]
    question = "what colour is the square?"
    by_id = ask(client, ids["blue square left of yellow star"], question)
    resp = client.post(f"{API}/ask/upload", files={"file": ("s.png", png(scene), "image/png")},
                       data={"question": question})
    assert resp.status_code == 200, resp.text
    uploaded = resp.json()
    assert uploaded["image_id"] is None
    assert uploaded["answer"] == by_id["answer"] == "blue"
    assert abs(uploaded["probability"] - by_id["probability"]) < 1e-3
    # the JSON path also takes the form, as /search/image does for curl
    form = client.post(f"{API}/ask", files={"file": ("s.png", png(scene), "image/png")},
                       data={"question": question})
    assert form.status_code == 200 and form.json()["answer"] == "blue"

    described = client.post(f"{API}/describe/upload",
                            files={"file": ("s.png", png(scene), "image/png")})
    assert described.status_code == 200, described.text
    stored = client.post(f"{API}/describe",
                         json={"image_id": ids["blue square left of yellow star"]})
    assert stored.status_code == 200, stored.text
    assert described.json()["caption"] == stored.json()["caption"]
    assert described.json()["image_id"] is None


def test_describe_names_what_is_in_the_scene(bundled: Bundled) -> None:
    client, ids = bundled
    if not heads_ready(client.get(f"{API}/info").json()):
        pytest.skip("no ask/describe heads bundled yet")
    right = []
    for name, scene in CLEAR_SCENES.items():
        resp = client.post(f"{API}/describe", json={"image_id": ids[name]})
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert out["image_id"] == ids[name]
        assert 0.0 <= out["probability"] <= 1.0
        # a claim in the world's grammar; true of the scene and naming every object for all but
        # one scene (the decoder is right for 0.95 of in-distribution scenes)
        claim = parse_caption(out["caption"])
        assert claim is not None, (name, out["caption"])
        if syn.claim_true(claim, scene) and names_every_object(claim, scene):
            right.append(name)
    assert len(right) >= len(CLEAR_SCENES) - 1, right


def test_unknown_words_get_a_low_probability(bundled: Bundled) -> None:
    client, ids = bundled
    if not heads_ready(client.get(f"{API}/info").json()):
        pytest.skip("no ask/describe heads bundled yet")
    known = ask(client, ids["red circle"], "what colour is the circle?")
    odd = ask(client, ids["red circle"], "what colour is the teapot?")
    check_answer_shape(odd)
    assert odd["probability"] < known["probability"]


def test_bad_requests_are_clear_errors(bundled: Bundled) -> None:
    client, ids = bundled
    some = ids["red circle"]
    missing: list[tuple[str, dict[str, Any]]] = [
        (f"{API}/ask", {"image_id": 99_999, "question": "what colour?"}),
        (f"{API}/describe", {"image_id": 99_999})]
    for path, body in missing:
        assert_error(client.post(path, json=body), 404, "not_found")
    bad: list[dict[str, Any]] = [
        {"image_id": some, "question": ""}, {"image_id": some, "question": " \t"},
        {"image_id": some, "question": "x" * 201}, {"image_id": some},
        {"image_id": 0, "question": "what?"}, {"image_id": "1", "question": "what?"},
        {"image_id": some, "question": "what?", "k": 3}]
    for body in bad:
        assert_error(client.post(f"{API}/ask", json=body), 422, "validation_error")
    assert_error(client.post(f"{API}/describe", json={}), 422, "validation_error")
    assert_error(client.post(f"{API}/ask", content=b"{nope", headers={
        "content-type": "application/json"}), 400, "bad_json")
    # the upload paths take a form with the file
    assert_error(client.post(f"{API}/ask/upload", json={"image_id": some, "question": "what?"}),
                 415, "unsupported_media_type")
    assert_error(client.post(f"{API}/ask/upload", data={"question": "what?"},
                             files={"other": ("x.txt", b"x", "text/plain")}), 400, "no_file")
    scene = png(CLEAR_SCENES["red circle"])
    assert_error(client.post(f"{API}/ask/upload", files={"file": ("s.png", scene, "image/png")}),
                 422, "validation_error")  # no question
    assert_error(client.post(f"{API}/describe/upload",
                             files={"file": ("s.png", b"not an image", "image/png")}),
                 400, "bad_image")


def test_a_model_without_the_heads_says_how_to_train_them(apps: Apps, tmp_path: Path) -> None:
    # the bundled backbone under another path: loaded without any of the bundled heads
    backbone = tmp_path / "backbone.safetensors"
    backbone.symlink_to(bundled_paths("fusion-tiny")[0])
    client = apps.start(pretrained=str(backbone), api_key="k", protect_reads=True)
    key = {"X-API-Key": "k"}
    info = client.get(f"{API}/info", headers=key).json()
    assert info["has_ask"] is False and info["has_describe"] is False
    resp = client.post(f"{API}/images", files={"files": ("s.png", png(CLEAR_SCENES["red circle"]))},
                       headers=key)
    assert resp.status_code == 201, resp.text
    item_id = resp.json()["items"][0]["id"]
    scene = png(CLEAR_SCENES["red circle"])
    calls: list[tuple[str, dict[str, Any]]] = [
        (f"{API}/ask", {"json": {"image_id": item_id, "question": "what colour is it?"}}),
        (f"{API}/ask/upload", {"files": {"file": ("s.png", scene, "image/png")},
                               "data": {"question": "what colour is it?"}}),
        (f"{API}/describe", {"json": {"image_id": item_id}}),
        (f"{API}/describe/upload", {"files": {"file": ("s.png", scene, "image/png")}}),
    ]
    for path, kwargs in calls:
        assert_error(client.post(path, **kwargs), 401, "unauthorized")  # reads are protected
        error = assert_error(client.post(path, headers=key, **kwargs), 409, "not_available")
        assert "fusion-search train" in error["message"], error
    # an unknown image is still a 404 first
    assert_error(client.post(f"{API}/describe", json={"image_id": 99_999}, headers=key), 404)


def test_openapi_documents_the_four_operations(bundled: Bundled) -> None:
    client, _ = bundled
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    content = {p: set(paths[f"{API}{p}"]["post"]["requestBody"]["content"])
               for p in ("/ask", "/ask/upload", "/describe", "/describe/upload")}
    assert content == {"/ask": {"application/json"}, "/ask/upload": {"multipart/form-data"},
                       "/describe": {"application/json"},
                       "/describe/upload": {"multipart/form-data"}}
    schemas = spec["components"]["schemas"]
    assert schemas["AskUpload"]["properties"]["file"] == {"type": "string", "format": "binary"}
    assert set(schemas["AskUpload"]["required"]) == {"file", "question"}
    assert schemas["AskRequest"]["properties"]["question"]["maxLength"] == 200
    assert {"answer", "probability", "alternatives", "grid"} <= set(
        schemas["AskResponse"]["properties"])
    assert {"caption", "probability"} <= set(schemas["DescribeResponse"]["properties"])
    assert "409" in paths[f"{API}/ask"]["post"]["responses"]
