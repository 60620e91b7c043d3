"""API key, CORS, how files are served, and no endpoint that takes a path or a URL."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from http_checks import assert_error
from reliability_support import API, make_settings, scene

import app.deps
from app.main import create_app

KEY = "correct horse battery staple"
GOOD = {"X-API-Key": KEY}
# Parameter or body field names that would let a caller point the server at a file or a URL.
PATHLIKE = {"path", "url", "uri", "filepath", "file_path", "filename", "dir", "directory",
            "folder", "src", "href", "location", "source", "data_dir"}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """Writes need the key; reads are open; CORS for one origin."""
    data_dir = tmp_path_factory.mktemp("keyed") / "data"
    settings = make_settings(data_dir, api_key=KEY, cors_origins="https://ok.example")
    with TestClient(create_app(settings)) as client:
        yield client


def _upload(client: TestClient, i: int, headers: dict[str, str] | None = None) -> Any:
    data, caption = scene(i)
    return client.post(f"{API}/images", files={"files": ("s.png", data, "image/png")},
                       data={"caption": caption}, headers=headers or {})


def test_writes_need_the_key(keyed: TestClient) -> None:
    assert_error(_upload(keyed, 0), 401, "unauthorized")
    assert_error(_upload(keyed, 0, {"X-API-Key": "wrong"}), 401, "unauthorized")
    assert_error(_upload(keyed, 0, {"X-API-Key": KEY + " "}), 401)
    assert_error(_upload(keyed, 0, {"X-API-Key": ""}), 401)
    resp = _upload(keyed, 0, GOOD)
    assert resp.status_code == 201, resp.text
    item_id = resp.json()["items"][0]["id"]
    assert_error(keyed.delete(f"{API}/images/{item_id}"), 401)
    assert_error(keyed.delete(f"{API}/images/{item_id}", headers={"X-API-Key": "nope"}), 401)
    # reads stay open without FUSION_PROTECT_READS
    assert keyed.get(f"{API}/images/{item_id}").status_code == 200
    assert keyed.get(f"{API}/images/{item_id}/file").status_code == 200
    assert keyed.post(f"{API}/search/text", json={"query": "red"}).status_code == 200
    assert keyed.delete(f"{API}/images/{item_id}", headers=GOOD).status_code == 200
    assert keyed.get(f"{API}/info").json()["auth"] == {"writes": True, "reads": False}


def test_the_key_is_compared_in_constant_time(keyed: TestClient) -> None:
    """Every key check goes through hmac.compare_digest (time independent of where the bytes
    differ), and its answer alone decides: a wrong key that compare_digest were to accept gets
    in, the right one that it were to refuse does not."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes, verdict: bool | None = None) -> bool:
        calls.append((a, b))
        return real(a, b) if verdict is None else verdict

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(app.deps.hmac, "compare_digest", recording)
        assert_error(_upload(keyed, 3, {"X-API-Key": "wrong key"}), 401, "unauthorized")
        assert calls == [(b"wrong key", KEY.encode())]
        assert _upload(keyed, 3, GOOD).status_code == 201
        assert calls[-1] == (KEY.encode(), KEY.encode())

        patch.setattr(app.deps.hmac, "compare_digest", lambda a, b: recording(a, b, True))
        assert _upload(keyed, 4, {"X-API-Key": "wrong key"}).status_code == 201
        patch.setattr(app.deps.hmac, "compare_digest", lambda a, b: recording(a, b, False))
        assert_error(_upload(keyed, 5, GOOD), 401, "unauthorized")
    assert len(calls) == 4


def test_protect_reads_covers_searches_and_files(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", api_key=KEY, protect_reads=True)
    with TestClient(create_app(settings)) as client:
        item_id = _upload(client, 1, GOOD).json()["items"][0]["id"]
        data, _ = scene(1)
        reads = [
            ("GET", f"{API}/images", {}),
            ("GET", f"{API}/images/{item_id}", {}),
            ("GET", f"{API}/images/{item_id}/file", {}),
            ("POST", f"{API}/search/text", {"json": {"query": "red"}}),
            ("POST", f"{API}/search/image", {"json": {"image_id": item_id}}),
            ("POST", f"{API}/search/image",
             {"files": {"file": ("q.png", data, "image/png")}}),
            ("POST", f"{API}/search/composed", {"json": {"image_id": item_id, "text": "blue"}}),
            ("POST", f"{API}/explain", {"json": {"image_id": item_id, "text": "blue"}}),
        ]
        for method, url, kwargs in reads:
            assert_error(client.request(method, url, **kwargs), 401)
            assert_error(client.request(method, url, headers={"X-API-Key": "x"}, **kwargs), 401)
            ok = client.request(method, url, headers=GOOD, **kwargs)
            assert ok.status_code == 200, (url, ok.text)  # the bundled model explains
        assert client.get("/health").status_code == 200  # liveness stays open
        assert client.get(f"{API}/info").json()["auth"] == {"writes": True, "reads": True}


def test_cors_allows_only_configured_origins(keyed: TestClient) -> None:
    def preflight(origin: str) -> Any:
        return keyed.options(f"{API}/search/text", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key"})

    ok = preflight("https://ok.example")
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://ok.example"
    assert "x-api-key" in ok.headers["access-control-allow-headers"].lower()
    bad = preflight("https://evil.example")
    assert bad.headers.get("access-control-allow-origin") is None
    simple = keyed.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_no_cors_headers_without_configured_origins(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path / "data"))) as client:
        resp = client.get("/health", headers={"Origin": "https://ok.example"})
        assert "access-control-allow-origin" not in resp.headers


def test_files_are_served_by_id_with_their_type_and_nosniff(keyed: TestClient) -> None:
    item = _upload(keyed, 2, GOOD).json()["items"][0]
    assert item["file_url"] == f"{API}/images/{item['id']}/file"
    resp = keyed.get(item["file_url"])
    assert resp.status_code == 200
    assert resp.headers["content-type"] == item["content_type"] == "image/png"
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in resp.headers["content-security-policy"]
    assert resp.content == scene(2)[0]
    # the stored name is never an input: no route serves a file by name
    sha = item["sha256"]
    for url in (f"{API}/files/{sha}.png", f"/files/{sha[:2]}/{sha[2:4]}/{sha}.png",
                f"{API}/images/{sha}/file", f"/static/../../data/files/{sha[:2]}"):
        resp = keyed.get(url)
        assert resp.status_code in (404, 422), url
        assert resp.content != scene(2)[0]


@pytest.mark.parametrize("url", ["/static/../main.py", "/static/%2e%2e/main.py",
                                 "/static/..%2f..%2fpyproject.toml", "/static//etc/passwd"])
def test_static_files_do_not_escape_their_folder(keyed: TestClient, url: str) -> None:
    resp = keyed.get(url)
    assert resp.status_code in (400, 404), (url, resp.status_code)
    assert b"def create_app" not in resp.content and b"root:" not in resp.content


def _field_names(node: Any, spec: dict[str, Any], seen: set[str]) -> Iterator[str]:
    """Every property name in a schema, following $refs."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            seen.add(ref)
            target: Any = spec
            for part in ref.lstrip("#/").split("/"):
                target = target[part]
            yield from _field_names(target, spec, seen)
        for name, sub in node.get("properties", {}).items():
            yield name
            yield from _field_names(sub, spec, seen)
        for key in ("items", "anyOf", "oneOf", "allOf", "additionalProperties"):
            if key in node:
                yield from _field_names(node[key], spec, seen)
    elif isinstance(node, list):
        for sub in node:
            yield from _field_names(sub, spec, seen)


def test_no_endpoint_accepts_a_path_or_url(keyed: TestClient) -> None:
    spec = keyed.get("/openapi.json").json()
    inputs: list[str] = []
    for ops in spec["paths"].values():
        for op in ops.values():
            inputs += [p["name"].lower() for p in op.get("parameters", [])]
            for media in op.get("requestBody", {}).get("content", {}).values():
                inputs += [n.lower() for n in _field_names(media.get("schema", {}), spec, set())]
    assert inputs, "no inputs found: the walk is broken"
    assert not PATHLIKE.intersection(inputs), sorted(PATHLIKE.intersection(inputs))
    # and nothing looks like a URL or a file path by its format
    text = str(spec)
    assert "'format': 'uri'" not in text and "'format': 'path'" not in text
