"""/api/v1/images: upload, download, duplicates, listing, lookup and delete over real storage."""

from __future__ import annotations

import hashlib

from api_support import (
    API,
    Gallery,
    encode,
    hit_ids,
    part,
    scene,
    scene_png,
    search_file,
    search_text,
    upload,
    upload_scene,
)
from fastapi.testclient import TestClient
from http_checks import assert_error


def test_upload_one_with_caption_and_tags(client: TestClient) -> None:
    data = scene_png(0)
    resp = client.post(
        f"{API}/images",
        files=[part(data, "dir/../My Scene.png")],
        data={"caption": "  a red thing  ", "tags": ["Red, shapes", "demo", "red"]},
    )
    assert resp.status_code == 201, resp.text
    (item,) = resp.json()["items"]
    assert item["id"] >= 1
    assert item["caption"] == "a red thing"
    assert item["tags"] == ["demo", "red", "shapes"]  # trimmed, lower-cased, unique, sorted
    assert item["content_type"] == "image/png"
    assert (item["width"], item["height"]) == (64, 64)
    assert item["bytes"] == len(data)
    assert item["sha256"] == hashlib.sha256(data).hexdigest()
    assert item["original_name"] == "My Scene.png"  # no directory part survives
    assert item["duplicate"] is False
    assert item["file_url"] == f"{API}/images/{item['id']}/file"

    assert item.pop("near_duplicates") == []  # the upload answer only: nothing stored before

    got = client.get(f"{API}/images/{item['id']}")
    assert got.status_code == 200
    assert got.json() == item


def test_upload_many_in_one_request(client: TestClient) -> None:
    files = [scene_png(i) for i in range(4)]
    items = upload(client, *files, caption="four scenes", tags=["batch"])
    assert len(items) == 4
    assert len({it["id"] for it in items}) == 4
    assert [it["sha256"] for it in items] == [hashlib.sha256(f).hexdigest() for f in files]
    assert all(it["caption"] == "four scenes" and it["tags"] == ["batch"] for it in items)
    assert client.get(f"{API}/images").json()["total"] == 4


def test_single_file_field_is_accepted(client: TestClient) -> None:
    resp = client.post(f"{API}/images", files={"file": ("one.png", scene_png(1), "image/png")})
    assert resp.status_code == 201, resp.text
    assert len(resp.json()["items"]) == 1


def test_file_url_serves_the_same_bytes_with_its_type(client: TestClient) -> None:
    png = scene_png(2)
    jpeg = encode(scene(3).image, "JPEG", quality=90)
    items = upload(client, png) + upload(client, jpeg)
    for item, data, ctype in zip(items, (png, jpeg), ("image/png", "image/jpeg"), strict=True):
        assert item["content_type"] == ctype
        resp = client.get(item["file_url"])
        assert resp.status_code == 200
        assert resp.content == data
        assert resp.headers["content-type"] == ctype
        assert resp.headers["x-content-type-options"] == "nosniff"


def test_duplicate_upload_returns_the_existing_item(client: TestClient) -> None:
    first = upload_scene(client, 4)
    (again,) = upload(client, scene_png(4), caption="another caption", tags=["other"])
    assert again["duplicate"] is True
    assert again["id"] == first["id"]
    assert again["caption"] == first["caption"]  # the stored item, not the new fields
    assert client.get(f"{API}/images").json()["total"] == 1

    # the same bytes twice in one request: one row, the second reported as a duplicate
    pair = upload(client, scene_png(5), scene_png(5))
    assert [it["duplicate"] for it in pair] == [False, True]
    assert pair[0]["id"] == pair[1]["id"]
    assert client.get(f"{API}/images").json()["total"] == 2


def test_list_pages_newest_first(client: TestClient) -> None:
    ids = [upload_scene(client, i)["id"] for i in range(5)]
    newest_first = ids[::-1]

    page = client.get(f"{API}/images", params={"limit": 2}).json()
    assert (page["total"], page["offset"], page["limit"]) == (5, 0, 2)
    assert [it["id"] for it in page["items"]] == newest_first[:2]

    page = client.get(f"{API}/images", params={"offset": 2, "limit": 2}).json()
    assert [it["id"] for it in page["items"]] == newest_first[2:4]

    page = client.get(f"{API}/images", params={"offset": 4, "limit": 2}).json()
    assert [it["id"] for it in page["items"]] == newest_first[4:]

    page = client.get(f"{API}/images", params={"offset": 10}).json()
    assert page["items"] == [] and page["total"] == 5


def test_list_filters_by_tag(client: TestClient) -> None:
    cats = upload(client, scene_png(0), scene_png(1), tags=["cat"])
    upload(client, scene_png(2), tags=["dog"])
    both = upload(client, scene_png(3), tags=["cat,dog"])

    page = client.get(f"{API}/images", params={"tag": " CAT "}).json()
    assert page["total"] == 3
    assert {it["id"] for it in page["items"]} == {cats[0]["id"], cats[1]["id"], both[0]["id"]}
    assert client.get(f"{API}/images", params={"tag": "dog"}).json()["total"] == 2
    assert client.get(f"{API}/images", params={"tag": "bird"}).json() == {
        "items": [], "total": 0, "offset": 0, "limit": 50}


def test_unknown_id_is_404(gallery: Gallery) -> None:
    c = gallery.client
    for resp in (c.get(f"{API}/images/999"), c.get(f"{API}/images/999/file"),
                 c.delete(f"{API}/images/999")):
        assert_error(resp, 404, "not_found")


PATH_TRICKS = [
    "/images/../../etc/passwd",
    "/images/..%2F..%2Fetc%2Fpasswd",
    "/images/..%2F..%2Fetc%2Fpasswd/file",
    "/images/%2e%2e/file",
    "/images/1%2F..%2F..%2Fcatalog.sqlite3/file",
    "/images/1/..%2F..%2Fcatalog.sqlite3",
    "/images/-1/file",
    "/images/0",
    "/images/99999999999999999999999999/file",
]


def test_path_tricks_are_json_4xx_and_never_a_file(gallery: Gallery) -> None:
    for path in PATH_TRICKS:
        resp = gallery.client.get(API + path)
        assert resp.status_code in (404, 422), path
        assert_error(resp, resp.status_code)
        assert b"root:" not in resp.content and b"SQLite" not in resp.content, path


def test_delete_removes_it_everywhere(client: TestClient) -> None:
    items = [upload_scene(client, i) for i in range(3)]
    gone = items[1]
    # build the caption index first so the delete must keep it current
    assert len(client.post(f"{API}/search/image",
                           json={"image_id": items[0]["id"], "target": "captions"}
                           ).json()["hits"]) == 2

    resp = client.delete(f"{API}/images/{gone['id']}")
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == gone["id"]

    assert_error(client.get(f"{API}/images/{gone['id']}"), 404, "not_found")
    assert_error(client.get(gone["file_url"]), 404, "not_found")
    listed = client.get(f"{API}/images").json()
    assert listed["total"] == 2 and gone["id"] not in [it["id"] for it in listed["items"]]
    assert gone["id"] not in hit_ids(search_text(client, scene(1).caption, k=10))
    assert gone["id"] not in hit_ids(search_file(client, scene_png(1), k=10))
    captions = client.post(f"{API}/search/image",
                           json={"image_id": items[0]["id"], "target": "captions", "k": 10})
    assert hit_ids(captions.json()) == [items[2]["id"]]
    assert_error(client.post(f"{API}/search/image", json={"image_id": gone["id"]}), 404)
    assert_error(client.delete(f"{API}/images/{gone['id']}"), 404, "not_found")

    # the same bytes can come back, as a new item
    (back,) = upload(client, scene_png(1))
    assert back["duplicate"] is False and back["id"] != gone["id"]
    assert client.get(back["file_url"]).content == scene_png(1)
