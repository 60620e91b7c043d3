"""The web page in a real browser: a uvicorn server in a subprocess, Debian's chromium, Playwright.

Tests that depend on ranking quality check it only once the bundled model is trained
(``/api/v1/info`` says so); everything else holds with untrained weights too. The server, the
browser and the steps on the page are in browser_support.py and conftest.py.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import (
    DEMO_COUNT,
    TIMEOUT_MS,
    Browser,
    Page,
    Server,
    card,
    expect,
    new_page,
    open_home,
    ready,
    result_ids,
    scene_file,
    spawn_server,
    stop_server,
    text_search,
    wait_thumbnails,
)

from app.demo import DEMO_SPLIT

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "screenshot.png"
API_KEY = "e2e-secret-key"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """The demo server, and one that wants an API key even for reads; both start at once."""
    started = {
        "demo": spawn_server(tmp_path_factory.mktemp("e2e-server")),
        "auth": spawn_server(tmp_path_factory.mktemp("e2e-auth"), demo_count=4,
                             FUSION_API_KEY=API_KEY, FUSION_PROTECT_READS="true"),
    }
    try:
        yield started
    finally:
        for srv in started.values():
            stop_server(srv)


@pytest.fixture(scope="module")
def server(servers: dict[str, Server]) -> Server:
    return ready(servers["demo"])


@pytest.fixture(scope="module")
def auth_server(servers: dict[str, Server]) -> Server:
    return ready(servers["auth"])


# ---- tests ---------------------------------------------------------------------------------
# The screenshot comes first, before other tests add their own images to the collection.

def test_screenshot_of_a_text_search(page: Page, server: Server) -> None:
    info = server.info()
    open_home(page, server)
    text_search(page, "a red circle")
    assert len(result_ids(page)) >= 10
    if info["has_fusion"]:
        # the attention re-rank is on by default with trained fusion weights
        expect(page.get_by_test_id("rerank")).to_be_checked()
        expect(page.get_by_test_id("result-match").first).to_be_visible()
    if info["trained"]:
        # a scene with a red circle among the first three (the demo tags name every object)
        tags = page.get_by_test_id("result-tags").evaluate_all(
            "els => els.slice(0, 3).map(e => e.innerText.split(/\\s+/))")
        assert any("red" in t and "circle" in t for t in tags), tags
    wait_thumbnails(page)
    page.get_by_test_id("q").blur()
    page.mouse.move(0, 0)
    # docs/screenshot.png is committed: write it when it is missing or on request
    # (FUSION_UPDATE_SCREENSHOT=1, after retraining), so a test run leaves the checkout clean
    refresh = not SCREENSHOT.exists() or os.environ.get("FUSION_UPDATE_SCREENSHOT") == "1"
    target = SCREENSHOT if refresh else server.data_dir.parent / "screenshot.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target))
    assert target.stat().st_size > 10_000


def test_home_shows_model_info_and_newest_images(page: Page, server: Server) -> None:
    info = server.info()
    open_home(page, server)
    header = page.get_by_test_id("model-info")
    expect(header).to_contain_text(info["model"])
    expect(header).to_contain_text(f"{info['items']} items")
    expect(header).to_contain_text("trained" if info["trained"] else "untrained")
    expect(page.get_by_test_id("results-title")).to_have_text("Newest images")
    ids = result_ids(page)
    assert ids == sorted(ids, reverse=True) and len(ids) == 24  # newest first, one page
    expect(page.get_by_test_id("auth-panel")).to_be_hidden()  # no API key on this server
    # "load more" pages through GET /images with offset/limit
    page.get_by_test_id("load-more").click()
    expect(page.get_by_test_id("result")).to_have_count(48)
    more = result_ids(page)
    assert more[:24] == ids and len(set(more)) == 48
    # a tag button on a card filters the collection by that tag
    page.get_by_test_id("result").first.locator(".tag", has_text="demo").click()
    expect(page.get_by_test_id("tag-filter")).to_have_value("demo")
    expect(page.get_by_test_id("status")).to_contain_text("tagged “demo”")


def test_upload_then_find_it_by_its_caption(page: Page, server: Server, tmp_path: Path) -> None:
    path, caption = scene_file(tmp_path, "test", 3)
    open_home(page, server)
    page.get_by_test_id("upload-files").set_input_files(str(path))
    page.get_by_test_id("upload-caption").fill(caption)
    page.get_by_test_id("upload-tags").fill("e2e, Uploaded ")
    page.get_by_test_id("upload-submit").click()
    expect(page.get_by_test_id("status")).to_contain_text("Uploaded 1 image")
    first = page.get_by_test_id("result").first  # the newest is shown first
    expect(first.get_by_test_id("result-caption")).to_have_text(caption)
    new_id = int(first.get_attribute("data-id") or 0)
    item = server.get(f"/api/v1/images/{new_id}").json()
    assert item["caption"] == caption and item["tags"] == ["e2e", "uploaded"]
    expect(page.get_by_test_id("model-info")).to_contain_text(f"{DEMO_COUNT + 1} items")

    # with a tag filter only the upload can match, trained or not
    text_search(page, caption, tags="uploaded")
    assert result_ids(page) == [new_id]
    expect(card(page, new_id).get_by_test_id("result-score")).to_contain_text("score")

    # the whole collection: the trained model ranks the exact image at the top
    text_search(page, caption, tags="")
    if server.info()["trained"]:
        top = result_ids(page)[:3]
        assert new_id in top, f"{new_id} not in the top 3 {top} for {caption!r}"


def test_composed_search_from_a_result(page: Page, server: Server) -> None:
    open_home(page, server)
    ref = page.get_by_test_id("result").nth(2)
    ref_id = int(ref.get_attribute("data-id") or 0)
    ref.get_by_test_id("use-reference").click()
    expect(page.get_by_test_id("reference")).to_be_visible()
    expect(page.get_by_test_id("reference-label")).to_contain_text(f"#{ref_id}")
    box = page.get_by_test_id("compose-text")
    expect(box).to_be_focused()
    box.fill("make the circle blue")
    box.press("Enter")
    expect(page.get_by_test_id("results-title")).to_contain_text(
        f"Image {ref_id}, changed: “make the circle blue”")
    expect(page.get_by_test_id("result").first).to_be_visible()
    ids = result_ids(page)
    assert ids and ref_id not in ids  # the reference itself is left out
    # "Similar" on a result: image -> image search by id
    target = page.get_by_test_id("result").first
    sim_id = int(target.get_attribute("data-id") or 0)
    target.get_by_test_id("similar").click()
    expect(page.get_by_test_id("results-title")).to_have_text(f"Images similar to image {sim_id}")
    expect(page.get_by_test_id("result").first).to_be_visible()
    assert sim_id not in result_ids(page)


def test_search_by_dropped_image_file(page: Page, server: Server, tmp_path: Path) -> None:
    path, _ = scene_file(tmp_path, DEMO_SPLIT, 5)  # one of the demo scenes: the same pixels
    open_home(page, server)
    page.get_by_test_id("image-file").set_input_files(str(path))
    expect(page.get_by_test_id("results-title")).to_have_text("Images similar to your image")
    expect(page.locator("#main")).to_have_attribute("aria-busy", "false")
    top = page.get_by_test_id("result-score").first.inner_text()
    assert float(top.split()[-1]) > 0.99, top  # the same image, stored by the demo
    # drag-and-drop onto the zone: a DataTransfer carrying the file
    data = list(path.read_bytes())
    page.evaluate("""([bytes]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], 'drop.png', {type: 'image/png'}));
        const zone = document.querySelector('[data-testid="compose-drop"]');
        const init = {dataTransfer: dt, bubbles: true, cancelable: true};
        zone.dispatchEvent(new DragEvent('drop', init));
    }""", [data])
    expect(page.get_by_test_id("reference-label")).to_have_text("drop.png")
    page.get_by_test_id("compose-text").fill("the same scene with a red star")
    page.get_by_test_id("compose-submit").click()
    expect(page.get_by_test_id("results-title")).to_contain_text("Your image, changed")
    expect(page.get_by_test_id("result").first).to_be_visible()


def test_why_this_hit_overlays_a_heatmap(page: Page, server: Server) -> None:
    info = server.info()
    open_home(page, server)
    text_search(page, "a red circle")
    first = page.get_by_test_id("result").first
    first.get_by_test_id("explain").click()
    if info["has_fusion"]:
        heat = first.get_by_test_id("heatmap")
        expect(heat).to_be_visible()
        expect(first.get_by_test_id("explain-result")).to_contain_text("% match for “a red circle”")
        prob = float(first.get_by_test_id("explain-result").get_attribute("data-probability") or -1)
        assert 0.0 <= prob <= 1.0
    else:
        alert = page.get_by_role("alert")
        expect(alert).to_be_visible()
        expect(alert).to_contain_text("fusion_unavailable")

    # the drawing itself, with a known grid: a peak at row 1, col 5 of a 7x7 grid
    grid = [[0.01] * 7 for _ in range(7)]
    grid[1][5] = 0.9
    body = {"image_id": 0, "text": "a red circle", "probability": 0.873,
            "grid": grid, "rows": 7, "cols": 7}

    def fulfil(route: Any) -> None:
        sent = json.loads(route.request.post_data or "{}")
        route.fulfill(status=200, content_type="application/json",
                      body=json.dumps({**body, "image_id": sent["image_id"]}))

    page.route("**/api/v1/explain", fulfil)
    second = page.get_by_test_id("result").nth(1)
    button = second.get_by_test_id("explain")
    button.click()
    heat = second.get_by_test_id("heatmap")
    expect(heat).to_be_visible()
    expect(button).to_have_attribute("aria-pressed", "true")
    expect(second.get_by_test_id("explain-result")).to_contain_text("87% match")
    alpha = heat.evaluate("""c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return {w: c.width, h: c.height, peak: d[(1 * 7 + 5) * 4 + 3], corner: d[3]};
    }""")
    assert (alpha["w"], alpha["h"]) == (7, 7)
    assert alpha["peak"] > alpha["corner"]
    # the canvas covers the thumbnail exactly (both are the model's centre square)
    img_box = second.locator("img").bounding_box()
    heat_box = heat.bounding_box()
    assert img_box and heat_box
    for key in ("x", "y", "width", "height"):
        assert abs(img_box[key] - heat_box[key]) < 1.5, (key, img_box, heat_box)
    button.click()  # a second press hides it again
    expect(heat).to_be_hidden()
    expect(button).to_have_attribute("aria-pressed", "false")


def test_delete_asks_first_and_removes_the_item(
    page: Page, server: Server, tmp_path: Path
) -> None:
    path, caption = scene_file(tmp_path, "test", 5)
    with path.open("rb") as f:
        r = server.post("/api/v1/images", files={"files": (path.name, f, "image/png")},
                        data={"caption": caption, "tags": "doomed"})
    assert r.status_code == 201, r.text
    item_id = r.json()["items"][0]["id"]
    open_home(page, server)
    text_search(page, caption, tags="doomed")
    target = card(page, item_id)
    expect(target).to_be_visible()

    dialogs: list[str] = []

    def dismiss(d: Any) -> None:
        dialogs.append(d.message)
        d.dismiss()

    page.once("dialog", dismiss)
    target.get_by_test_id("delete").click()
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not dialogs and time.monotonic() < deadline:  # until the confirm was answered
        page.wait_for_timeout(20)
    assert dialogs, "no confirmation dialog"
    expect(target).to_be_visible()  # cancelled: still there
    assert server.get(f"/api/v1/images/{item_id}").status_code == 200
    assert dialogs and "cannot be undone" in dialogs[0]

    page.once("dialog", lambda d: d.accept())
    target.get_by_test_id("delete").click()
    expect(target).to_have_count(0)
    expect(page.get_by_test_id("status")).to_contain_text("Deleted")
    assert server.get(f"/api/v1/images/{item_id}").status_code == 404
    text_search(page, caption, tags="doomed")  # searching again: gone
    expect(page.get_by_test_id("empty")).to_be_visible()
    assert item_id not in result_ids(page)


def test_bad_upload_shows_the_api_error(page: Page, server: Server, tmp_path: Path) -> None:
    bad = tmp_path / "holiday.jpg"
    bad.write_text("this is a text file, not a JPEG\n")
    before = server.info()["items"]
    open_home(page, server)
    page.get_by_test_id("upload-files").set_input_files(str(bad))
    page.get_by_test_id("upload-caption").fill("not really a picture")
    page.get_by_test_id("upload-submit").click()
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text("Upload failed")
    expect(alert).to_contain_text("not a recognised image")
    assert server.info()["items"] == before
    # the next good action clears the message
    text_search(page, "a green square")
    expect(alert).to_be_hidden()


def test_key_field_appears_on_401(page: Page, server: Server, tmp_path: Path) -> None:
    """A server that says nothing about auth, but answers 401: the key field appears."""
    def info_without_auth(route: Any) -> None:
        resp = route.fetch()
        data = resp.json()
        data["auth"] = {"writes": False, "reads": False}
        route.fulfill(response=resp, body=json.dumps(data))

    def unauthorized(route: Any) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        route.fulfill(status=401, content_type="application/json", body=json.dumps(
            {"error": {"code": "unauthorized", "message": "a valid X-API-Key header is required"}}))

    page.route("**/api/v1/info", info_without_auth)
    page.route("**/api/v1/images", unauthorized)
    open_home(page, server)
    expect(page.get_by_test_id("auth-panel")).to_be_hidden()
    path, _ = scene_file(tmp_path, "test", 7)
    page.get_by_test_id("upload-files").set_input_files(str(path))
    page.get_by_test_id("upload-submit").click()
    expect(page.get_by_role("alert")).to_contain_text("X-API-Key")
    expect(page.get_by_test_id("auth-panel")).to_be_visible()
    expect(page.get_by_test_id("api-key")).to_be_visible()


def test_api_key_prompt_with_protected_reads(browser: Browser, auth_server: Server) -> None:
    srv = auth_server
    page, errors = new_page(browser)
    try:
        page.goto(f"{srv.url}/")
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        # /info says reads need a key: the field is offered, and the first listing got a 401
        expect(page.get_by_test_id("auth-panel")).to_be_visible()
        expect(page.get_by_role("alert")).to_contain_text("API key")
        expect(page.get_by_test_id("result")).to_have_count(0)

        page.get_by_test_id("api-key").fill("wrong")
        page.get_by_test_id("api-key").press("Enter")
        expect(page.get_by_role("alert")).to_contain_text("refused")
        expect(page.get_by_test_id("auth-panel")).to_be_visible()  # offered again

        page.get_by_test_id("api-key").fill(API_KEY)
        page.get_by_test_id("api-key-save").click()
        expect(page.get_by_test_id("result")).to_have_count(4)
        expect(page.get_by_role("alert")).to_be_hidden()
        # <img src> cannot send the header: the thumbnails were fetched with it, as blobs
        wait_thumbnails(page)
        srcs = page.locator("#results img").evaluate_all("els => els.map(e => e.src)")
        assert all(s.startswith("blob:") for s in srcs), srcs

        # the key is remembered across reloads (localStorage), and the panel stays folded
        page.reload()
        expect(page.get_by_test_id("result")).to_have_count(4)
        expect(page.get_by_test_id("auth-panel")).to_be_hidden()
        expect(page.get_by_test_id("auth-toggle")).to_be_visible()
        assert page.evaluate("localStorage.getItem('fusion-search.apiKey')") == API_KEY
    finally:
        page.context.close()
    assert not errors, errors


def test_phone_width_has_no_horizontal_scroll(browser: Browser, server: Server) -> None:
    page, errors = new_page(browser, 375, 800)
    try:
        open_home(page, server)
        text_search(page, "a yellow triangle")
        wait_thumbnails(page)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the page is {width}px wide on a 375px screen"
        columns = page.get_by_test_id("results").evaluate(
            "g => getComputedStyle(g).gridTemplateColumns.split(' ').length")
        assert columns in (1, 2)
        box = page.get_by_test_id("result").first.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 375
        # the side panels start folded so the results come first, and open on demand
        panel = page.get_by_test_id("panel-upload")
        expect(panel).not_to_have_attribute("open", "")
        panel.locator("summary").click()
        expect(page.get_by_test_id("upload-submit")).to_be_visible()
    finally:
        page.context.close()
    assert not errors, errors


def test_keyboard_only_search(page: Page, server: Server) -> None:
    open_home(page, server)
    page.keyboard.press("Tab")  # the skip link comes first
    expect(page.locator(".skip-link")).to_be_focused()
    page.get_by_test_id("q").focus()
    page.keyboard.type("a white star")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("results-title")).to_contain_text("a white star")
    expect(page.get_by_test_id("result")).to_have_count(24)
    first_page = result_ids(page)
    # "load more" on a search asks for a larger k and appends only the new hits
    page.get_by_test_id("load-more").click()
    expect(page.get_by_test_id("result")).to_have_count(48)
    more = result_ids(page)
    assert more[:24] == first_page and len(set(more)) == 48
    button = page.get_by_test_id("result").first.get_by_test_id("similar")
    button.focus()
    page.keyboard.press("Tab")
    focused = page.get_by_test_id("result").first.get_by_test_id("use-reference")
    expect(focused).to_be_focused()
    outline = focused.evaluate("b => getComputedStyle(b).outlineStyle")
    assert outline != "none"  # a visible focus ring
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("reference")).to_be_visible()
    expect(page.get_by_test_id("compose-text")).to_be_focused()
