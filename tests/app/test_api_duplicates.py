"""Near duplicates through the API: the upload answer, one image's duplicates, and the groups of
the collection; with the real model, SQLite, FAISS and stored files."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from api_support import API, make_settings
from fastapi.testclient import TestClient
from PIL import Image, ImageEnhance

from app.main import create_app
from models import synthetic as syn

SIDE = 192


def _bytes(img: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _post(client: TestClient, data: bytes, name: str) -> dict[str, Any]:
    resp = client.post(f"{API}/images", files={"files": (name, data, "image/png")})
    assert resp.status_code == 201, resp.text
    (item,) = resp.json()["items"]
    return item  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    ex = syn.example("test", 41, size=SIDE)
    original = ex.image
    # the same scene graph, objects placed elsewhere: similar, not a duplicate
    moved = replace(ex.scene, objects=tuple(
        replace(o, x=1.0 - o.x, y=1.0 - o.y) for o in ex.scene.objects))
    w, h = original.size
    copies = {
        "jpeg": _bytes(original, "JPEG", quality=60),
        "half": _bytes(original.resize((w // 2, h // 2), Image.Resampling.LANCZOS)),
        "crop": _bytes(original.crop((10, 10, w - 10, h - 10))),
        "bright": _bytes(ImageEnhance.Brightness(original).enhance(1.15)),
    }
    with TestClient(create_app(make_settings(tmp_path_factory.mktemp("dups")))) as client:
        items: dict[str, Any] = {"original": _post(client, _bytes(original), "a.png")}
        items["other"] = _post(client, _bytes(syn.example("test", 42, size=SIDE).image), "o.png")
        items["twin"] = _post(client, _bytes(syn.render(moved, SIDE)), "twin.png")
        for name, data in copies.items():
            items[name] = _post(client, data, f"{name}.png")
        items["again"] = _post(client, _bytes(original), "a-again.png")
        yield client, items


def _near_ids(entry: dict[str, Any]) -> set[int]:
    return {d["id"] for d in entry["near_duplicates"]}


def test_the_upload_answer_lists_the_stored_near_duplicates(
        world: tuple[TestClient, dict[str, Any]]) -> None:
    _, items = world
    original = items["original"]["id"]
    assert items["original"]["near_duplicates"] == []  # nothing stored before it
    assert items["other"]["near_duplicates"] == []
    assert items["twin"]["near_duplicates"] == [], "a re-staged scene is not a duplicate"
    assert _near_ids(items["jpeg"]) == {original}
    for name in ("half", "crop", "bright"):
        assert original in _near_ids(items[name]), name
        assert items["twin"]["id"] not in _near_ids(items[name]), name
    dup = items["jpeg"]["near_duplicates"][0]
    assert 0.9 < dup["similarity"] <= 1.0 and dup["original_name"] == "a.png"
    assert dup["file_url"] == f"{API}/images/{original}/file"
    # an exact copy is the stored item itself, as before
    assert items["again"]["duplicate"] is True and items["again"]["id"] == original


def test_an_images_duplicates(world: tuple[TestClient, dict[str, Any]]) -> None:
    client, items = world
    original = items["original"]["id"]
    resp = client.get(f"{API}/images/{original}/duplicates")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    copies = {items[n]["id"] for n in ("jpeg", "half", "crop", "bright")}
    assert body["id"] == original and {d["id"] for d in body["duplicates"]} == copies
    sims = [d["similarity"] for d in body["duplicates"]]
    assert sims == sorted(sims, reverse=True)
    for name in ("twin", "other"):
        assert client.get(f"{API}/images/{items[name]['id']}/duplicates").json()[
            "duplicates"] == []


def test_groups_are_paged_over_the_collection(world: tuple[TestClient, dict[str, Any]]) -> None:
    client, items = world
    body = client.get(f"{API}/duplicates").json()
    assert (body["total"], body["offset"], body["limit"]) == (7, 0, 50)
    grouped = {g["item"]["id"]: {d["id"] for d in g["duplicates"]} for g in body["groups"]}
    original = items["original"]["id"]
    family = {items[n]["id"] for n in ("original", "jpeg", "half", "crop", "bright")}
    assert set(grouped) == family  # the twin and the other image are in no group
    assert grouped[original] == family - {original}
    # pages of 2 images, newest first: the first page holds the two newest
    first = client.get(f"{API}/duplicates", params={"limit": 2}).json()
    assert [g["item"]["id"] for g in first["groups"]] == [items["bright"]["id"],
                                                          items["crop"]["id"]]
    last = client.get(f"{API}/duplicates", params={"offset": 6, "limit": 2}).json()
    assert [g["item"]["id"] for g in last["groups"]] == [original]


@pytest.mark.parametrize(("path", "status"), [
    (f"{API}/images/999/duplicates", 404), (f"{API}/images/0/duplicates", 422),
    (f"{API}/duplicates?limit=0", 422), (f"{API}/duplicates?offset=-1", 422),
    (f"{API}/duplicates?limit=201", 422)])
def test_bad_requests(world: tuple[TestClient, dict[str, Any]], path: str, status: int) -> None:
    client, _ = world
    resp = client.get(path)
    assert resp.status_code == status, resp.text
    assert set(resp.json()["error"]) == {"code", "message"}
