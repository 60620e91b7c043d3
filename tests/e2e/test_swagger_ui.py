"""Swagger UI and ReDoc in Chromium with the network cut off: only the server itself answers.

The pages load their JavaScript and CSS from the package (fastapi-offline's bundles), so they
render on an air-gapped machine; "Try it out" then runs real requests against a real uvicorn.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from browser_support import TIMEOUT_MS, Browser, Page, Server, expect, scene_file, serving


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("swagger"), demo_count=12) as srv:
        yield srv


# ReDoc's sidebar shows a logo from cdn.redoc.ly; the pages' Content-Security-Policy stops it in
# the browser, before any network. Everything else the policy refuses would be a bug.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.fixture
def offline_page(browser: Browser, server: Server) -> Iterator[tuple[Page, list[str]]]:
    """A page whose every request to anywhere but the server is refused and recorded.

    What the page's security policy refuses is recorded too (as "csp: <message>")."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    own = urlsplit(server.url).netloc
    elsewhere: list[str] = []
    errors: list[str] = []

    def only_the_server(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).netloc == own or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort()

    def refused_by_policy(msg: Any) -> None:
        text = msg.text
        if "Content Security Policy" in text and REDOC_LOGO not in text:
            elsewhere.append(f"csp: {text}")

    page.route("**/*", only_the_server)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", refused_by_policy)
    yield page, elsewhere
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_operation(page: Page, tag: str, operation_id: str) -> Any:
    """Expand an operation and press "Try it out"; returns its block."""
    op = page.locator(f"#operations-{tag}-{operation_id}")
    op.locator(".opblock-summary").click()
    op.get_by_role("button", name="Try it out").click()
    return op


def live_response(op: Any, status: int) -> dict[str, Any]:
    """The status and JSON body Swagger UI shows for the request it just sent."""
    live = op.locator(".live-responses-table tr.response")
    expect(live.locator(".response-col_status")).to_have_text(str(status))
    body = live.locator(".response-col_description .microlight").first.inner_text()
    return json.loads(body)  # type: ignore[no-any-return]


def test_swagger_ui_renders_and_runs_a_text_search(offline_page: tuple[Page, list[str]],
                                                   server: Server) -> None:
    page, elsewhere = offline_page
    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("fusion-search")
    op = open_operation(page, "search", "search_text")
    op.locator("textarea.body-param__text").fill(json.dumps({"query": "a red circle", "k": 5}))
    op.get_by_role("button", name="Execute").click()
    body = live_response(op, 200)
    assert len(body["hits"]) == 5 and all(h["file_url"] for h in body["hits"])
    assert body["hits"][0]["score"] >= body["hits"][-1]["score"]
    assert not elsewhere, f"requests that left the server: {elsewhere}"


def test_swagger_ui_uploads_a_file(offline_page: tuple[Page, list[str]], server: Server,
                                   tmp_path: Path) -> None:
    page, elsewhere = offline_page
    path, caption = scene_file(tmp_path, "test", 11)
    before = server.info()["items"]
    page.goto(f"{server.url}/docs")
    op = open_operation(page, "images", "upload_images")
    op.locator('tr[data-property-name="files"] input[type="file"]').set_input_files(str(path))
    op.locator('tr[data-property-name="caption"] input[type="text"]').fill(caption)
    op.get_by_role("button", name="Execute").click()
    body = live_response(op, 201)
    (item,) = body["items"]
    assert item["caption"] == caption and item["original_name"] == path.name
    assert item["content_type"] == "image/png" and not item["duplicate"]
    assert server.info()["items"] == before + 1
    stored = server.get(f"/api/v1/images/{item['id']}/file")
    assert stored.content == path.read_bytes()  # the very bytes of the chosen file
    assert not elsewhere, f"requests that left the server: {elsewhere}"


def test_swagger_ui_searches_by_an_uploaded_image(offline_page: tuple[Page, list[str]],
                                                  server: Server, tmp_path: Path) -> None:
    page, elsewhere = offline_page
    path, _ = scene_file(tmp_path, "test", 12)
    page.goto(f"{server.url}/docs")
    op = open_operation(page, "search", "search_image_upload")
    op.locator('tr[data-property-name="file"] input[type="file"]').set_input_files(str(path))
    op.locator('tr[data-property-name="tags"] input[type="text"]').fill("")  # was "string"
    op.get_by_role("button", name="Execute").click()
    body = live_response(op, 200)
    assert len(body["hits"]) == 10  # k: the form's default
    assert not elsewhere, f"requests that left the server: {elsewhere}"


def test_redoc_renders(offline_page: tuple[Page, list[str]], server: Server) -> None:
    page, elsewhere = offline_page
    page.goto(f"{server.url}/redoc")
    expect(page.get_by_role("heading", name="fusion-search (0.1.0)")).to_be_visible()
    # one section per operation, its summary as the heading
    for operation_id in ("search_text", "search_image_upload", "upload_images"):
        expect(page.locator(f'[id="tag/search/operation/{operation_id}"], '
                            f'[id="tag/images/operation/{operation_id}"]')
               .get_by_role("heading").first).to_be_visible()
    expect(page.get_by_role("heading", name="tag/search/operation/search_text Text -> image "
                                            "search")).to_be_visible()
    assert not elsewhere, f"requests that left the server: {elsewhere}"
