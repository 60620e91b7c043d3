"""Health, readiness, metrics, info, the OpenAPI schema, API keys and CORS."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from api_support import (
    API,
    Apps,
    Gallery,
    hit_ids,
    make_settings,
    scene,
    scene_png,
    search_text,
    upload,
    upload_scene,
)
from fastapi.testclient import TestClient
from http_checks import assert_error
from pydantic import ValidationError

import models
from models.device import resolve_device
from models.precision import cpu_info

WEIGHTS = Path(models.__file__).resolve().parent / "weights"


def test_health_and_ready(gallery: Gallery) -> None:
    assert gallery.client.get("/health").json() == {"status": "ok"}
    resp = gallery.client.get("/ready")
    assert resp.status_code == 200 and resp.json() == {"status": "ready"}


def test_info_describes_model_index_and_counts(client: TestClient) -> None:
    upload(client, scene_png(0), scene_png(1), scene_png(2))
    info = client.get(f"{API}/info").json()
    trained = (WEIGHTS / "fusion-tiny.safetensors").is_file()
    assert info["model"] == "fusion-tiny"
    assert isinstance(info["dim"], int) and info["dim"] > 0
    assert info["trained"] is trained
    fusion_file = WEIGHTS / "fusion-tiny.fusion.safetensors"
    assert info["has_fusion"] is (trained and fusion_file.is_file())
    assert info["fusion"] == ("attention" if info["has_fusion"] else "late")
    assert info["precision"] in ("fp32", "bf16")
    assert info["index"] == "Flat"  # three vectors: exact search
    assert (info["items"], info["vectors"]) == (3, 3)
    assert info["auth"] == {"writes": False, "reads": False}
    assert info["limits"]["max_upload_bytes"] == 25 * 1024 * 1024


def test_info_names_the_cpu_the_device_and_why_this_precision(client: TestClient) -> None:
    info = client.get(f"{API}/info").json()
    cpu = cpu_info()  # what /proc/cpuinfo says on this machine
    assert info["cpu"] == {"model": cpu.model, "flags": list(cpu.flags),
                           "native_bf16": cpu.native_bf16}
    assert set(info["cpu"]["flags"]) <= {"avx2", "avx512f", "avx512_vnni", "avx512_bf16",
                                         "amx_bf16"}
    assert info["device"] == resolve_device("auto")  # the default setting
    if info["device"] == "cpu":
        assert info["precision_reason"].startswith(f"auto: the CPU ({cpu.model})")
        assert (info["precision"] == "bf16") == cpu.native_bf16


def test_serves_on_the_cpu_when_told_so(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSION_DEVICE", "cpu")
    client = apps.start()
    assert client.get(f"{API}/info").json()["device"] == "cpu"
    upload_scene(client, 0)
    upload_scene(client, 1)
    assert len(search_text(client, "a shape", k=2)["hits"]) == 2


@pytest.mark.parametrize(("device", "message"), [
    ("cuda:x", "unknown device 'cuda:x'; use auto, cpu, cuda or cuda:N"),
    ("cuda", "device 'cuda' asks for a GPU, but CUDA is not available on this machine"),
])
def test_a_device_this_machine_lacks_is_refused_at_start(
        device: str, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValidationError, match=re.escape(f"FUSION_DEVICE: {message}")):
        make_settings(tmp_path, device=device)


def test_info_reports_a_chosen_index_type(apps: Apps) -> None:
    client = apps.start(index_type="HNSW32")
    upload(client, scene_png(0), scene_png(1))
    assert client.get(f"{API}/info").json()["index"] == "HNSW32"
    assert len(search_text(client, "a shape", k=2)["hits"]) == 2


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    (item,) = upload(client, scene_png(0))
    client.get(f"{API}/images/{item['id']}")
    search_text(client, "a red circle")
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert "# TYPE fusion_request_seconds histogram" in text
    assert re.search(r'^fusion_request_seconds_count\{.*method="POST".*status="201"', text, re.M)
    # requests are labelled by route template, not by raw path (bounded label values)
    assert re.search(r'route="[^"]*/images/\{item_id\}"', text)
    assert f'/images/{item["id"]}"' not in text
    assert re.search(r"^fusion_items 1(\.0)?$", text, re.M)
    assert re.search(r'^fusion_index_info\{factory="Flat"\} 1(\.0)?$', text, re.M)


EXPECTED_OPERATIONS = {
    ("/api/v1/images", "post"), ("/api/v1/images", "get"),
    ("/api/v1/images/{item_id}", "get"), ("/api/v1/images/{item_id}", "delete"),
    ("/api/v1/images/{item_id}/file", "get"),
    ("/api/v1/images/{item_id}/duplicates", "get"), ("/api/v1/duplicates", "get"),
    ("/api/v1/search/text", "post"), ("/api/v1/search/image", "post"),
    ("/api/v1/search/image/upload", "post"), ("/api/v1/search/composed", "post"),
    ("/api/v1/search/composed/upload", "post"), ("/api/v1/explain", "post"),
    ("/api/v1/ask", "post"), ("/api/v1/ask/upload", "post"),
    ("/api/v1/describe", "post"), ("/api/v1/describe/upload", "post"),
    ("/api/v1/info", "get"), ("/health", "get"), ("/ready", "get"), ("/metrics", "get"),
}


def test_openapi_lists_every_route_and_docs_render(gallery: Gallery) -> None:
    schema = gallery.client.get("/openapi.json").json()
    operations = {(path, method) for path, ops in schema["paths"].items() for method in ops}
    assert operations == EXPECTED_OPERATIONS
    # one request content type per operation (client generators need it): the search by an
    # uploaded image has its own multipart operation beside the JSON one
    bodies = {(path, method): set(op["requestBody"]["content"])
              for path, ops in schema["paths"].items() for method, op in ops.items()
              if "requestBody" in op}
    assert all(len(types) == 1 for types in bodies.values()), bodies
    assert bodies[("/api/v1/search/image", "post")] == {"application/json"}
    assert bodies[("/api/v1/search/image/upload", "post")] == {"multipart/form-data"}
    assert bodies[("/api/v1/search/composed/upload", "post")] == {"multipart/form-data"}
    assert "ErrorResponse" in schema["components"]["schemas"]
    docs = gallery.client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text.lower()


def test_explain_answers_or_says_fusion_is_unavailable(gallery: Gallery) -> None:
    info = gallery.client.get(f"{API}/info").json()
    resp = gallery.client.post(f"{API}/explain",
                               json={"image_id": gallery.id_of(0), "text": scene(0).caption})
    if info["has_fusion"]:
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert 0.0 <= out["probability"] <= 1.0
        assert len(out["grid"]) == out["rows"] and len(out["grid"][0]) == out["cols"]
    else:
        assert_error(resp, 409, "fusion_unavailable")
    assert_error(gallery.client.post(f"{API}/explain", json={"image_id": 99_999, "text": "x"}),
                 404, "not_found")
    assert_error(gallery.client.post(f"{API}/explain", json={"image_id": 1, "text": " "}), 422)


# ---- API key ------------------------------------------------------------------------------------

KEY = {"X-API-Key": "secret"}
WRONG = {"X-API-Key": "Secret"}


def test_writes_need_the_key_reads_do_not(apps: Apps) -> None:
    client = apps.start(api_key="secret")
    assert client.get(f"{API}/info").json()["auth"] == {"writes": True, "reads": False}
    for headers in ({}, WRONG, {"X-API-Key": ""}):
        resp = client.post(f"{API}/images", files=[("files", ("a.png", scene_png(0)))],
                           headers=headers)
        assert_error(resp, 401, "unauthorized")
    assert client.get(f"{API}/images").json()["total"] == 0

    item = upload_scene(client, 0, headers=KEY)
    assert_error(client.delete(f"{API}/images/{item['id']}"), 401, "unauthorized")
    assert_error(client.delete(f"{API}/images/{item['id']}", headers=WRONG), 401)

    # reads stay open
    assert client.get(f"{API}/images").json()["total"] == 1
    assert client.get(item["file_url"]).status_code == 200
    assert item["id"] in hit_ids(search_text(client, scene(0).caption))

    assert client.delete(f"{API}/images/{item['id']}", headers=KEY).status_code == 200
    assert client.get(f"{API}/images").json()["total"] == 0


def test_protect_reads_guards_searches_and_files(apps: Apps) -> None:
    client = apps.start(api_key="secret", protect_reads=True)
    item = upload_scene(client, 1, headers=KEY)
    reads = [
        ("GET", f"{API}/images", None),
        ("GET", f"{API}/images/{item['id']}", None),
        ("GET", item["file_url"], None),
        ("POST", f"{API}/search/text", {"query": "a shape"}),
        ("POST", f"{API}/search/image", {"image_id": item["id"]}),
        ("POST", f"{API}/search/composed", {"image_id": item["id"], "text": "blue"}),
    ]
    for method, url, body in reads:
        for headers in ({}, WRONG):
            assert_error(client.request(method, url, json=body, headers=headers), 401,
                         "unauthorized")
        assert client.request(method, url, json=body, headers=KEY).status_code == 200, url
    file_search = client.post(f"{API}/search/image", files={"file": ("q.png", scene_png(1))})
    assert_error(file_search, 401, "unauthorized")
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200


def test_cors_preflight_for_a_configured_origin(apps: Apps) -> None:
    client = apps.start(cors_origins=["https://photos.example"], api_key="secret")
    resp = client.options(f"{API}/images", headers={
        "Origin": "https://photos.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key",
    })
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "https://photos.example"
    assert "POST" in resp.headers["access-control-allow-methods"]
    assert "x-api-key" in resp.headers["access-control-allow-headers"].lower()

    plain = client.get(f"{API}/images", headers={"Origin": "https://photos.example"})
    assert plain.headers["access-control-allow-origin"] == "https://photos.example"
    # an error answer carries the header too, so a browser can read the error
    refused = client.post(f"{API}/images", headers={"Origin": "https://photos.example"})
    assert_error(refused, 401)
    assert refused.headers["access-control-allow-origin"] == "https://photos.example"

    other = client.options(f"{API}/images", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers
    assert "access-control-allow-origin" not in client.get(
        f"{API}/images", headers={"Origin": "https://evil.example"}).headers
