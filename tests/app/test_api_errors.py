"""Every refusal has a clear status and the body {"error": {"code", "message"}}; none stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import API, encode, make_settings, noise_png, part, scene, scene_png
from fastapi.testclient import TestClient
from http_checks import ResponseLike, assert_error
from PIL import Image

from app.main import create_app

MAX_UPLOAD = 20_000
MAX_REQUEST = 60_000
MAX_FILES = 4


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An app with small limits: 20 kB a file, 60 kB a request, 4 files, 64x64 pixels."""
    settings = make_settings(tmp_path_factory.mktemp("limited"), max_upload_bytes=MAX_UPLOAD,
                             max_request_bytes=MAX_REQUEST, max_files_per_request=MAX_FILES,
                             max_pixels=64 * 64)
    with TestClient(create_app(settings)) as client:
        yield client
        # nothing any of these tests sent was stored
        assert client.get(f"{API}/images").json()["total"] == 0


def post_files(client: TestClient, *blobs: bytes) -> ResponseLike:
    return client.post(f"{API}/images", files=[part(b, f"f{i}.png") for i, b in enumerate(blobs)])


# ---- 400 ----------------------------------------------------------------------------------------

def test_random_bytes_are_400(limited: TestClient) -> None:
    assert_error(post_files(limited, bytes(range(256)) * 8), 400, "bad_image")


def test_truncated_image_is_400(limited: TestClient) -> None:
    data = scene_png(0)
    assert_error(post_files(limited, data[: len(data) // 2]), 400, "bad_image")


def test_empty_file_is_400(limited: TestClient) -> None:
    assert_error(post_files(limited, b""), 400, "empty_file")


def test_no_file_is_400(limited: TestClient) -> None:
    assert_error(limited.post(f"{API}/images", data={"caption": "nothing"}), 400, "no_file")
    assert_error(limited.post(f"{API}/images"), 400, "no_file")


def test_one_bad_file_refuses_the_whole_request(limited: TestClient) -> None:
    resp = post_files(limited, scene_png(0), b"definitely not an image", scene_png(1))
    assert_error(resp, 400, "bad_image")
    assert limited.get(f"{API}/images").json()["total"] == 0


# ---- 413 ----------------------------------------------------------------------------------------

def test_file_over_the_upload_limit_is_413(limited: TestClient) -> None:
    big = noise_png(100)  # ~30 kB: over the file limit, under the request limit
    assert MAX_UPLOAD < len(big) < MAX_REQUEST
    assert_error(post_files(limited, big), 413, "file_too_large")
    resp = limited.post(f"{API}/search/image", files={"file": ("q.png", big, "image/png")})
    assert_error(resp, 413, "file_too_large")


def test_body_over_the_request_limit_is_413(limited: TestClient) -> None:
    files = [noise_png(80, seed) for seed in range(MAX_FILES)]  # ~19.5 kB each
    assert all(len(f) < MAX_UPLOAD for f in files) and sum(map(len, files)) > MAX_REQUEST
    # declared by Content-Length: refused before the body is read
    assert_error(post_files(limited, *files), 413, "payload_too_large")
    big_json = {"query": "x" * MAX_REQUEST}
    assert_error(limited.post(f"{API}/search/text", json=big_json), 413, "payload_too_large")


def test_streamed_body_over_the_request_limit_is_413(limited: TestClient) -> None:
    """No Content-Length (chunked): the body is cut off once it passes the limit."""

    def chunks() -> Iterator[bytes]:
        yield b'{"query": "'
        for _ in range(8):
            yield b"x" * 10_000
        yield b'"}'

    resp = limited.post(f"{API}/search/text", content=chunks(),
                        headers={"content-type": "application/json"})
    assert_error(resp, 413, "payload_too_large")


def test_too_many_files_is_413(limited: TestClient) -> None:
    resp = post_files(limited, *[scene_png(i) for i in range(MAX_FILES + 1)])
    assert_error(resp, 413, "too_many_files")


def test_too_many_pixels_is_413(limited: TestClient) -> None:
    wide = encode(Image.new("RGB", (65, 64), "white"))  # tiny file, one pixel column too many
    assert_error(post_files(limited, wide), 413, "image_too_large")


# ---- 415 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX"])
def test_real_images_outside_the_allow_list_are_415(limited: TestClient, fmt: str) -> None:
    data = encode(scene(0).image, fmt)
    error = assert_error(post_files(limited, data), 415, "unsupported_media_type")
    assert fmt in error["message"]
    resp = limited.post(f"{API}/search/image", files={"file": ("q.img", data)})
    assert_error(resp, 415, "unsupported_media_type")


# ---- 422 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [
    {"caption": "x" * 2001},
    {"tags": ["t" * 65]},
    {"tags": [",".join(f"tag{i}" for i in range(51))]},
])
def test_bad_upload_fields_are_422(limited: TestClient, fields: dict[str, Any]) -> None:
    resp = limited.post(f"{API}/images", files=[part(scene_png(0))], data=fields)
    assert_error(resp, 422, "validation_error")


@pytest.mark.parametrize("params", [
    {"limit": 0}, {"limit": 501}, {"offset": -1}, {"limit": "many"}, {"tag": "t" * 65},
])
def test_bad_list_parameters_are_422(limited: TestClient, params: dict[str, Any]) -> None:
    assert_error(limited.get(f"{API}/images", params=params), 422, "validation_error")


# ---- routing ------------------------------------------------------------------------------------

def test_unknown_route_and_method_are_json(limited: TestClient) -> None:
    assert_error(limited.get(f"{API}/nothing-here"), 404, "not_found")
    assert_error(limited.put(f"{API}/images/1"), 405, "method_not_allowed")
    assert_error(limited.get(f"{API}/search/text"), 405, "method_not_allowed")


def test_requests_before_the_model_is_loaded_are_503(tmp_path: Path) -> None:
    """Without the lifespan (still loading) the API answers 503 and /ready says so."""
    client = TestClient(create_app(make_settings(tmp_path / "data")))  # no `with`: no lifespan
    assert client.get("/health").json() == {"status": "ok"}
    resp = client.get("/ready")
    assert resp.status_code == 503 and resp.json() == {"status": "loading"}
    assert_error(client.get(f"{API}/images"), 503, "not_ready")
    assert_error(client.post(f"{API}/search/text", json={"query": "x"}), 503, "not_ready")
