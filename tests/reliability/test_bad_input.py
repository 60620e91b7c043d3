"""Hostile and odd input: every bad request gets a 4xx JSON error, the server keeps serving, its
memory stays bounded; valid but unusual images are accepted and converted."""

from __future__ import annotations

import io
import socket
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from http_checks import assert_error
from PIL import Image
from reliability_support import API, LiveServer, record, scene

# Peak resident memory the server may reach while refusing all of this (the model is ~100 MB).
RSS_LIMIT_KB = int(2.5 * 1024 * 1024)
TRIED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _record_tried() -> Iterator[None]:
    yield
    cases = sorted(set(TRIED))
    accepted = [c for c in cases if c.startswith("accepted ")]
    record("bad_input", {"tried": len(cases), "refused": len(cases) - len(accepted),
                         "accepted_unusual": len(accepted), "cases": cases})


# -- crafted files ------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG declaring width x height RGB pixels, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024, 9)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring width x height RGB pixels, and no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def zlib_bomb_png(side: int = 6000) -> bytes:
    """A real side x side greyscale PNG (within the pixel limit) that compresses ~1000:1."""
    raw = (b"\x00" + b"\x00" * side) * side  # filter byte + pixels, per row
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 9))
            + _chunk(b"IEND", b""))


def gif_bomb() -> bytes:
    """GIF89a with a 65535 x 65535 logical screen and frame, and a few bytes of LZW data."""
    screen = struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)  # no global colour table
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
    lzw = b"\x02\x02\x4c\x01\x00"  # min code size 2, one sub-block, terminator
    return b"GIF89a" + screen + frame + lzw + b"\x3b"


def psd_like() -> bytes:
    """A minimal Photoshop file (8BPS, RGB, 4x4, raw)."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 4, 4, 8, 3)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + b"\x80" * (3 * 16)


def _rgb() -> Image.Image:
    return Image.new("RGB", (24, 16), (200, 40, 40))


def jpeg_bytes() -> bytes:
    return encode(Image.fromarray(np.random.default_rng(1).integers(
        0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")


BAD_FILES: dict[str, tuple[bytes, str, str, tuple[int, ...]]] = {
    # name: (bytes, filename, content type, acceptable statuses)
    "zero-byte file": (b"", "empty.png", "image/png", (400,)),
    "random bytes": (np.random.default_rng(0).bytes(4096), "x.jpg", "image/jpeg", (400,)),
    "truncated JPEG": (jpeg_bytes()[:600], "cut.jpg", "image/jpeg", (400,)),
    "truncated PNG": (scene(1)[0][: len(scene(1)[0]) // 2], "cut.png", "image/png", (400,)),
    "PNG bomb 100000x100000": (png_bomb(), "bomb.png", "image/png", (413,)),
    "GIF bomb 65535x65535": (gif_bomb(), "bomb.gif", "image/gif", (413,)),
    "text file": (b"just some words\n" * 20, "notes.txt", "text/plain", (400, 415)),
    "HTML file": (b"<!doctype html><html><body><script>alert(1)</script></body></html>",
                  "page.html", "text/html", (400, 415)),
    "SVG named .jpg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
                       b"<script>alert(1)</script></svg>", "pic.jpg", "image/jpeg", (400, 415)),
    "ICO": (encode(_rgb(), "ICO"), "x.ico", "image/x-icon", (415,)),
    "TGA": (encode(_rgb(), "TGA"), "x.tga", "image/x-tga", (415,)),
    "PPM": (encode(_rgb(), "PPM"), "x.ppm", "image/x-portable-pixmap", (415,)),
    "PSD-like": (psd_like(), "x.psd", "image/vnd.adobe.photoshop", (415,)),
    "PDF": (encode(_rgb(), "PDF"), "x.pdf", "application/pdf", (400, 415)),
    "EPS (would need Ghostscript)": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
                                     b"showpage\n%%EOF\n", "x.eps", "application/postscript",
                                     (400, 415)),
}


def _alive(client: httpx.Client | TestClient) -> None:
    resp = client.get("/health")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}


# -- uploads refused ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_is_refused_with_json_error(asgi_client: TestClient, name: str) -> None:
    data, filename, ctype, statuses = BAD_FILES[name]
    before = asgi_client.get(f"{API}/info").json()["items"]
    resp = asgi_client.post(f"{API}/images", files={"files": (filename, data, ctype)},
                            data={"caption": "should not be stored"})
    assert_error(resp, statuses)
    TRIED.append(name)
    _alive(asgi_client)
    assert asgi_client.get(f"{API}/info").json()["items"] == before


# Pillow refuses on its own from MAX_IMAGE_PIXELS (about 89 million pixels, 179 million for an
# error); between the service's limit and that, only the service's pixel check stands.
ABOVE_LIMIT = 6400  # 40,960,000 pixels: over the default FUSION_MAX_PIXELS of 40,000,000
BELOW_LIMIT = 6300  # 39,690,000 pixels


def test_pixel_limit_refuses_before_decoding(asgi_client: TestClient) -> None:
    """Header-only PNGs of about 100 bytes declare ~40 million pixels. Just over the service's
    limit (and far under Pillow's) the answer is 413 image_too_large; just under it the same
    kind of file gets as far as decoding and fails there, as a truncated image. So the 413 came
    from the declared size, before any pixel was decoded."""
    assert ABOVE_LIMIT**2 > 40_000_000 > BELOW_LIMIT**2
    assert ABOVE_LIMIT**2 < Image.MAX_IMAGE_PIXELS
    limits = asgi_client.get(f"{API}/info").json()["limits"]
    assert limits["max_pixels"] == 40_000_000, limits
    over = png_header_only(ABOVE_LIMIT, ABOVE_LIMIT)
    under = png_header_only(BELOW_LIMIT, BELOW_LIMIT)
    assert len(over) < 200
    for path, fields in (("images", {}), ("search/image", {}),
                         ("search/composed", {"text": "but blue"})):
        part = "files" if path == "images" else "file"
        resp = asgi_client.post(f"{API}/{path}", files={part: ("big.png", over, "image/png")},
                                data=fields)
        error = assert_error(resp, 413, "image_too_large")
        assert f"{ABOVE_LIMIT}x{ABOVE_LIMIT}" in error["message"]
        resp = asgi_client.post(f"{API}/{path}", files={part: ("big.png", under, "image/png")},
                                data=fields)
        assert_error(resp, 400, "bad_image")
    TRIED.append("PNG header just over FUSION_MAX_PIXELS")
    _alive(asgi_client)


@pytest.mark.parametrize("name", ["PNG bomb 100000x100000", "truncated PNG", "SVG named .jpg"])
def test_bad_query_image_is_refused(asgi_client: TestClient, name: str) -> None:
    data, filename, ctype, statuses = BAD_FILES[name]
    for path, fields in (("search/image", {}), ("search/composed", {"text": "but blue"})):
        resp = asgi_client.post(f"{API}/{path}", files={"file": (filename, data, ctype)},
                                data=fields)
        assert_error(resp, statuses)
        TRIED.append(f"{name} as {path} query")
    _alive(asgi_client)


def test_empty_bodies_are_refused(asgi_client: TestClient) -> None:
    assert_error(asgi_client.post(f"{API}/images"), (400, 422))
    assert_error(asgi_client.post(f"{API}/images", content=b"",
                                  headers={"content-type": "multipart/form-data; boundary=x"}),
                 (400, 422))
    assert_error(asgi_client.post(f"{API}/images", data={"caption": "no file"}), 400, "no_file")
    for path in ("search/text", "search/image", "search/composed", "explain"):
        assert_error(asgi_client.post(f"{API}/{path}"), (400, 422))
        assert_error(asgi_client.post(f"{API}/{path}", content=b"{",
                                      headers={"content-type": "application/json"}), (400, 422))
        assert_error(asgi_client.post(f"{API}/{path}", content=b"a=b",
                                      headers={"content-type": "text/plain"}), (400, 415, 422))
    TRIED.extend(["empty body", "malformed JSON", "wrong content type"])
    _alive(asgi_client)


def _multipart(parts: int, boundary: str = "b0undary") -> bytes:
    one = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
           f"filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\nx\r\n").encode()
    return one * parts + f"--{boundary}--\r\n".encode()


def test_ten_thousand_part_multipart_is_refused(asgi_client: TestClient) -> None:
    body = _multipart(10_000)
    resp = asgi_client.post(f"{API}/images", content=body,
                            headers={"content-type": "multipart/form-data; boundary=b0undary"})
    assert_error(resp, (400, 413))
    fields = b"".join(b"--b\r\nContent-Disposition: form-data; name=\"tags\"\r\n\r\nt\r\n"
                      for _ in range(10_000)) + b"--b--\r\n"
    resp = asgi_client.post(f"{API}/images", content=fields,
                            headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(resp, (400, 413, 422))
    TRIED.extend(["10,000 file parts", "10,000 field parts"])
    _alive(asgi_client)


def test_file_over_the_upload_limit_is_413(asgi_client: TestClient) -> None:
    limit = asgi_client.get(f"{API}/info").json()["limits"]["max_upload_bytes"]
    data = b"\xff\xd8\xff" + b"\x00" * limit
    resp = asgi_client.post(f"{API}/images", files={"files": ("big.jpg", data, "image/jpeg")})
    assert_error(resp, 413)
    TRIED.append("file over max_upload_bytes")
    _alive(asgi_client)


# -- queries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "   ", "\n\t ", "\x00", "\x00 \x00"])
def test_empty_queries_are_422(asgi_client: TestClient, query: str) -> None:
    assert_error(asgi_client.post(f"{API}/search/text", json={"query": query}), 422)
    TRIED.append(f"query {query!r}")
    _alive(asgi_client)


@pytest.mark.parametrize("query", ["red circle " * 1000, "a 🔴 circle 🟦🌈 ✨", "red\x00circle",
                                   "x" * 10_000, "ß∂ƒ©˙∆˚¬ 漢字 العربية"])
def test_long_and_odd_queries_are_answered(asgi_client: TestClient, query: str) -> None:
    resp = asgi_client.post(f"{API}/search/text", json={"query": query, "k": 3})
    assert resp.status_code == 200, resp.text
    assert "hits" in resp.json()
    for path in ("search/composed",):
        resp = asgi_client.post(f"{API}/{path}", json={"image_id": 10**9, "text": query})
        assert_error(resp, 404)
    TRIED.append(f"query of {len(query)} chars")
    _alive(asgi_client)


def test_query_over_the_schema_limit_is_422(asgi_client: TestClient) -> None:
    assert_error(asgi_client.post(f"{API}/search/text", json={"query": "x" * 100_001}), 422)
    TRIED.append("query of 100,001 chars")


@pytest.mark.parametrize("k", [0, -1, 10**6, 2**70, "ten", 1.5, None])
def test_bad_k_is_422(asgi_client: TestClient, k: Any) -> None:
    assert_error(asgi_client.post(f"{API}/search/text", json={"query": "red", "k": k}), 422)
    assert_error(asgi_client.post(f"{API}/search/image", json={"image_id": 1, "k": k}), 422)
    data, _ = scene(3)
    resp = asgi_client.post(f"{API}/search/image", files={"file": ("q.png", data, "image/png")},
                            data={"k": str(k)})
    assert_error(resp, 422)
    TRIED.append(f"k={k!r}")
    _alive(asgi_client)


def test_bad_list_paging_is_422(asgi_client: TestClient) -> None:
    for params in ({"limit": 0}, {"limit": -1}, {"limit": 10**6}, {"offset": -1},
                   {"offset": 2**70}):
        assert_error(asgi_client.get(f"{API}/images", params=params), 422)
    TRIED.append("bad paging")


@pytest.mark.parametrize("path", ["/images/999999", "/images/999999/file",
                                  "/images/9007199254740991"])
def test_unknown_ids_are_404(asgi_client: TestClient, path: str) -> None:
    assert_error(asgi_client.get(f"{API}{path}"), 404)
    TRIED.append(f"GET {path}")


def test_unknown_ids_in_bodies_are_404(asgi_client: TestClient) -> None:
    assert_error(asgi_client.delete(f"{API}/images/999999"), 404)
    assert_error(asgi_client.post(f"{API}/search/image", json={"image_id": 999999}), 404)
    assert_error(asgi_client.post(f"{API}/search/composed",
                                  json={"image_id": 999999, "text": "but red"}), 404)
    # the bundled model has fusion heads: an unknown image is 404, never "no fusion" (409)
    assert_error(asgi_client.post(f"{API}/explain", json={"image_id": 999999, "text": "red"}),
                 404, "not_found")
    TRIED.append("unknown ids in bodies")


@pytest.mark.parametrize("raw_id", ["0", "-1", "abc", "1.5", "9007199254740992", "9" * 40,
                                    "4611686018427387905", "%2e%2e%2fetc%2fpasswd",
                                    "..%2f..%2fetc%2fpasswd", "%00", "1%00"])
def test_bad_ids_are_4xx_and_never_file_contents(asgi_client: TestClient, raw_id: str) -> None:
    for suffix in ("", "/file"):
        resp = asgi_client.get(f"{API}/images/{raw_id}{suffix}")
        assert_error(resp, (400, 404, 422))
        assert b"root:" not in resp.content
    TRIED.append(f"id {raw_id!r}")


# -- valid but unusual images -------------------------------------------------------------------


def _exif_rotated_jpeg() -> bytes:
    """40 wide x 20 high pixels, tagged "rotate 90 CW to display" (orientation 6)."""
    img = Image.new("RGB", (40, 20), (0, 0, 200))
    img.paste((250, 250, 0), (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100,
                  loop=0)


def _palette_png_with_transparency() -> bytes:
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.paste(1, (8, 8, 24, 24))
    return encode(img, "PNG", transparency=0)


def _png16() -> bytes:
    arr = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 61).astype(np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    return encode(img, "PNG")


UNUSUAL: dict[str, tuple[bytes, str, tuple[int, int]]] = {
    # name: (bytes, content type stored, (width, height) reported)
    "CMYK JPEG": (encode(Image.new("CMYK", (30, 20), (0, 200, 200, 0)), "JPEG"),
                  "image/jpeg", (30, 20)),
    "16-bit PNG": (_png16(), "image/png", (32, 32)),
    "palette PNG with transparency": (_palette_png_with_transparency(), "image/png", (32, 32)),
    "greyscale PNG": (encode(Image.new("L", (20, 30), 99), "PNG"), "image/png", (20, 30)),
    "1-bit BMP": (encode(Image.new("1", (16, 16), 1), "BMP"), "image/bmp", (16, 16)),
    "RGBA WebP": (encode(Image.new("RGBA", (16, 12), (0, 90, 0, 128)), "WEBP"),
                  "image/webp", (16, 12)),
    "LA TIFF": (encode(Image.new("LA", (12, 12), (50, 100)), "TIFF"), "image/tiff", (12, 12)),
    "animated GIF": (_animated_gif(), "image/gif", (32, 32)),
    "EXIF-rotated JPEG": (_exif_rotated_jpeg(), "image/jpeg", (20, 40)),
}


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_unusual_valid_images_are_accepted(asgi_client: TestClient, name: str) -> None:
    data, ctype, (width, height) = UNUSUAL[name]
    resp = asgi_client.post(f"{API}/images", files={"files": ("odd.bin", data, "image/png")},
                            data={"caption": name})
    assert resp.status_code == 201, resp.text
    (item,) = resp.json()["items"]
    assert item["content_type"] == ctype
    # Reported dimensions are the displayed ones: EXIF orientation applied.
    assert (item["width"], item["height"]) == (width, height)
    stored = asgi_client.get(item["file_url"])
    assert stored.status_code == 200
    assert stored.content == data  # the original file is kept byte for byte
    assert stored.headers["content-type"] == ctype
    hits = asgi_client.post(f"{API}/search/image", json={"image_id": item["id"], "k": 1})
    assert hits.status_code == 200, hits.text
    TRIED.append(f"accepted {name}")


def test_animated_gif_keeps_its_frames(asgi_client: TestClient) -> None:
    data, _, _ = UNUSUAL["animated GIF"]
    resp = asgi_client.post(f"{API}/images", files={"files": ("a.gif", data, "image/gif")})
    assert resp.status_code == 201
    stored = asgi_client.get(resp.json()["items"][0]["file_url"]).content
    assert getattr(Image.open(io.BytesIO(stored)), "n_frames", 1) == 3


# -- against the real server: body limits over a raw socket, memory -----------------------------


def _raw_request(server: LiveServer, head: bytes, body_chunks: Iterable[bytes] = (),
                 timeout: float = 10.0) -> tuple[bytes, float]:
    """Send a request by hand; returns (the answer's bytes, seconds until its first byte)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        t0 = time.monotonic()
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking the rest: what we want
        answer = b""
        first = 0.0
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                first = first or time.monotonic() - t0
                answer += data
                if b"\r\n\r\n" in answer and len(answer) > 200:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    return answer, first


def test_declared_10_gb_body_is_413_at_once(live_server: LiveServer) -> None:
    head = (f"POST {API}/images HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {10 * 1024**3}\r\n\r\n").encode()
    answer, took = _raw_request(live_server, head, [b"--b\r\n" + b"x" * 1000])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"payload_too_large"' in answer
    # answered with 1,000 of the declared bytes sent: it never waited for the body. How soon is
    # a figure for the report, not a bound (busy shared cores stretch it).
    record("declared_10_gb_body", {"first_byte_s": round(took, 3)})
    TRIED.append("Content-Length 10 GB")
    _alive(httpx.Client(base_url=live_server.url))


def test_streamed_body_over_the_limit_is_cut_off(live_server: LiveServer) -> None:
    limit = httpx.get(f"{live_server.url}{API}/info").json()["limits"]["max_request_bytes"]
    head = (f"POST {API}/images HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    piece = 1024 * 1024
    first = b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"

    def chunks() -> Iterator[bytes]:
        yield f"{len(first):x}\r\n".encode() + first + b"\r\n"
        for _ in range(limit // piece + 8):
            yield f"{piece:x}\r\n".encode() + b"\x00" * piece + b"\r\n"

    answer, _ = _raw_request(live_server, head, chunks(), timeout=60.0)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    TRIED.append("chunked body over max_request_bytes")
    _alive(httpx.Client(base_url=live_server.url))


@pytest.mark.parametrize("target", [f"{API}/images/../../etc/passwd",
                                    f"{API}/images/1/../../../../../etc/passwd",
                                    f"{API}/images/..%2f..%2f..%2fetc%2fpasswd/file",
                                    "/static/../../../../etc/passwd",
                                    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd"])
def test_literal_traversal_paths_never_serve_files(live_server: LiveServer, target: str) -> None:
    """Sent byte for byte (an HTTP client library would normalise the dots away)."""
    head = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    answer, _ = _raw_request(live_server, head)
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:300]
    assert b"root:" not in answer
    TRIED.append(f"raw path {target}")


def test_server_memory_stays_bounded_under_bombs(live_server: LiveServer) -> None:
    bombs = [("bomb.png", png_bomb(), (413,)), ("bomb.gif", gif_bomb(), (413,)),
             ("deep.png", zlib_bomb_png(), (201,)),
             ("cut.png", BAD_FILES["truncated PNG"][0], (400,))]
    with httpx.Client(base_url=live_server.url, timeout=120.0) as client:
        for name, data, statuses in bombs:
            resp = client.post(f"{API}/images", files={"files": (name, data, "image/png")})
            assert resp.status_code in statuses, resp.text
            if resp.status_code >= 400:
                assert_error(resp, statuses)
            _alive(client)
            TRIED.append(f"live {name} ({len(data)} bytes)")
        resp = client.post(f"{API}/images", content=_multipart(10_000),
                           headers={"content-type": "multipart/form-data; boundary=b0undary"})
        assert_error(resp, (400, 413))
        _alive(client)
    memory = live_server.memory_kb()
    record("memory", {"peak_rss_mb": round(memory["VmHWM"] / 1024, 1),
                      "limit_mb": RSS_LIMIT_KB // 1024})
    assert memory["VmHWM"] < RSS_LIMIT_KB, memory
