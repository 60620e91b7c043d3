"""/docs and /redoc from installed files (never a CDN); a spec client generators can use; the
multipart search operations that spec describes, beside the JSON ones."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from api_support import API, Apps, Gallery, scene, scene_png
from http_checks import assert_error


def local_references(html: str) -> list[str]:
    """Every src/href of the page; fails if any leaves the server."""
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs, html
    assert all(r.startswith("/") and not r.startswith("//") for r in refs), refs
    assert "http://" not in html and "https://" not in html, html
    return refs


def test_swagger_ui_page_and_assets_are_served_locally(gallery: Gallery) -> None:
    page = gallery.client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    refs = local_references(page.text)
    assert "/docs-assets/swagger-ui-bundle.js" in refs and "/docs-assets/swagger-ui.css" in refs
    assert '"validatorUrl": null' in page.text  # no badge fetched from validator.swagger.io
    for ref in refs:
        asset = gallery.client.get(ref)
        assert asset.status_code == 200, ref
    js = gallery.client.get("/docs-assets/swagger-ui-bundle.js")
    assert js.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert len(js.content) > 500_000 and b"SwaggerUIBundle" in js.content
    redirect = gallery.client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200


def test_docs_pages_may_reach_only_this_server(gallery: Gallery) -> None:
    for path in ("/docs", "/redoc"):
        policy = gallery.client.get(path).headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'self'"
        assert directives["connect-src"] == "'self'"
        assert "http" not in policy  # no host allowed anywhere, CDNs included


def test_redoc_page_is_served_locally(gallery: Gallery) -> None:
    page = gallery.client.get("/redoc")
    assert page.status_code == 200
    refs = local_references(page.text)
    assert "/docs-assets/redoc.standalone.js" in refs
    assert "fonts.googleapis" not in page.text
    js = gallery.client.get("/docs-assets/redoc.standalone.js")
    assert js.status_code == 200 and len(js.content) > 500_000


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]  # type: ignore[no-any-return]


def test_file_fields_are_binary_everywhere(gallery: Gallery) -> None:
    spec = gallery.client.get("/openapi.json").json()
    assert not [n for n in walk(spec) if "contentMediaType" in n]
    forms = {path: resolve(spec, op["requestBody"]["content"]["multipart/form-data"]["schema"])
             for path, ops in spec["paths"].items() for op in ops.values()
             if "multipart/form-data" in op.get("requestBody", {}).get("content", {})}
    assert set(forms) == {f"{API}/images", f"{API}/search/image/upload",
                          f"{API}/search/composed/upload", f"{API}/ask/upload",
                          f"{API}/describe/upload"}
    upload = forms[f"{API}/images"]["properties"]
    files_item = next(s["items"] for s in upload["files"]["anyOf"] if s.get("type") == "array")
    assert files_item == {"type": "string", "format": "binary"}
    assert {"type": "string", "format": "binary"} in upload["file"]["anyOf"]
    for path in (f"{API}/search/image/upload", f"{API}/search/composed/upload",
                 f"{API}/ask/upload", f"{API}/describe/upload"):
        assert forms[path]["properties"]["file"] == {"type": "string", "format": "binary"}
        assert "file" in forms[path]["required"]


def test_operation_ids_are_the_route_names(gallery: Gallery) -> None:
    spec = gallery.client.get("/openapi.json").json()
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert {"upload_images", "search_text", "search_image", "search_image_upload",
            "search_composed", "search_composed_upload", "delete_image"} <= set(ids)


def test_search_by_uploaded_image_on_its_own_operation(gallery: Gallery) -> None:
    resp = gallery.client.post(f"{API}/search/image/upload",
                               files={"file": ("q.png", scene_png(4), "image/png")},
                               data={"k": "3", "tags": "gallery"})
    assert resp.status_code == 200, resp.text
    hits = resp.json()["hits"]
    assert hits[0]["id"] == gallery.id_of(4) and hits[0]["score"] > 0.99
    captions = gallery.client.post(f"{API}/search/image/upload",
                                   files={"file": ("q.png", scene_png(4), "image/png")},
                                   data={"target": "captions", "k": "2"})
    assert captions.status_code == 200 and captions.json()["hits"][0]["caption"]


def test_composed_search_by_uploaded_image_on_its_own_operation(gallery: Gallery) -> None:
    resp = gallery.client.post(f"{API}/search/composed/upload",
                               files={"file": ("q.png", scene_png(2), "image/png")},
                               data={"text": "make it blue", "k": "5"})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["hits"]) == 5
    missing_text = gallery.client.post(f"{API}/search/composed/upload",
                                       files={"file": ("q.png", scene_png(2), "image/png")})
    assert_error(missing_text, 422, "validation_error")


def test_upload_operations_take_only_a_form(gallery: Gallery) -> None:
    for path, body in ((f"{API}/search/image/upload", {"image_id": gallery.id_of(0)}),
                       (f"{API}/search/composed/upload",
                        {"image_id": gallery.id_of(0), "text": scene(1).caption})):
        error = assert_error(gallery.client.post(path, json=body), 415,
                             "unsupported_media_type")
        assert "multipart/form-data" in error["message"]
        assert path.removesuffix("/upload") in error["message"]  # where JSON goes instead
        no_file = gallery.client.post(path, data={"k": "3"}, files={"other": ("x", b"x")})
        assert_error(no_file, 400, "no_file")


def test_json_paths_still_take_a_form_for_curl(gallery: Gallery) -> None:
    """Undocumented now, kept for `curl -F file=@...` and older callers."""
    resp = gallery.client.post(f"{API}/search/image",
                               files={"file": ("q.png", scene_png(4), "image/png")},
                               data={"k": "3"})
    assert resp.status_code == 200 and resp.json()["hits"][0]["id"] == gallery.id_of(4)


def test_docs_pages_with_a_protected_api(apps: Apps) -> None:
    keyed = apps.start(api_key="k" * 24, protect_reads=True)
    assert keyed.get("/docs").status_code == 200
    assert keyed.get("/docs-assets/swagger-ui.css").status_code == 200
    assert keyed.get(f"{API}/images").status_code == 401
