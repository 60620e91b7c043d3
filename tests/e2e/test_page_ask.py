"""The "Ask" box and the "Describe" button on a result, in a real browser (Debian's chromium,
Playwright) against a real server with the bundled model and a small demo collection.

What the page shows is compared with what the API answers for the same image; the drawing of
the attention grid and the 409 message are also checked with known answers (a routed request).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from browser_support import Page, Server, expect, open_home, serving

QUESTION = "how many objects are there?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("e2e-ask"), demo_count=6) as srv:
        yield srv


def _first_card(page: Page) -> tuple[Any, int]:
    card = page.get_by_test_id("result").first
    return card, int(card.get_attribute("data-id") or 0)


def _ask(card: Any, question: str) -> None:
    box = card.get_by_test_id("ask-question")
    box.fill(question)
    box.press("Enter")  # Enter sends the question


def test_ask_and_describe_show_what_the_model_says(page: Page, server: Server) -> None:
    info = server.info()
    open_home(page, server)
    card, item_id = _first_card(page)

    _ask(card, QUESTION)
    result = card.get_by_test_id("ask-result")
    expect(result).to_be_visible()
    api = server.post("/api/v1/ask", json={"image_id": item_id, "question": QUESTION})
    if info.get("has_ask"):
        assert api.status_code == 200, api.text
        want = api.json()
        expect(card.get_by_test_id("ask-answer")).to_have_text(want["answer"])
        expect(result).to_have_attribute("data-probability", str(want["probability"]))
        expect(result).to_contain_text("%")
        alternatives = card.get_by_test_id("ask-alternatives")
        for alt in want["alternatives"]:
            expect(alternatives).to_contain_text(alt["answer"])
        heat = card.get_by_test_id("heatmap")
        expect(heat).to_be_visible()
        expect(heat).to_have_attribute("aria-label", f"Where the question “{QUESTION}” looked "
                                                     "in the image")
        size = heat.evaluate("c => [c.width, c.height]")
        assert size == [want["cols"], want["rows"]]
    else:  # a model without the head: the server's reason, in the card, not a crash
        assert api.status_code == 409, api.text
        expect(result).to_contain_text("Not available with this model")
        expect(result).to_contain_text("fusion-search train")

    card.get_by_test_id("describe").click()
    out = card.get_by_test_id("describe-result")
    expect(out).to_be_visible()
    api = server.post("/api/v1/describe", json={"image_id": item_id})
    if info.get("has_describe"):
        assert api.status_code == 200, api.text
        want = api.json()
        expect(out).to_have_attribute("data-caption", want["caption"])
        expect(out).to_contain_text(f"“{want['caption']}”")
        expect(out).to_contain_text("%")
    else:
        assert api.status_code == 409, api.text
        expect(out).to_contain_text("Not available with this model")
        expect(out).to_contain_text("fusion-search train")
    expect(page.get_by_test_id("error")).to_be_hidden()


def test_the_grid_lies_over_the_thumbnail_with_its_peak_where_the_answer_says(
        page: Page, server: Server) -> None:
    # a known answer: an 8x8 grid with its peak at row 2, col 6
    grid = [[0.005] * 8 for _ in range(8)]
    grid[2][6] = 1.0 - 0.005 * 63
    body = {"image_id": 0, "question": "what colour is the star?", "answer": "yellow",
            "probability": 0.912, "grid": grid, "rows": 8, "cols": 8,
            "alternatives": [{"answer": "orange", "probability": 0.051},
                             {"answer": "white", "probability": 0.02},
                             {"answer": "red", "probability": 0.009}]}
    sent: list[dict[str, Any]] = []

    def fulfil(route: Any) -> None:
        sent.append(json.loads(route.request.post_data or "{}"))
        route.fulfill(status=200, content_type="application/json",
                      body=json.dumps({**body, "image_id": sent[-1]["image_id"]}))

    open_home(page, server)
    page.route("**/api/v1/ask", fulfil)
    card = page.get_by_test_id("result").nth(1)
    if server.info()["has_fusion"]:  # "Why this hit" is on: the answer's grid replaces it
        page.get_by_test_id("q").fill("a star")
        card.get_by_test_id("explain").click()
        expect(card.get_by_test_id("explain")).to_have_attribute("aria-pressed", "true")
    card.get_by_test_id("ask-question").fill("  what colour is the star?  ")
    card.get_by_test_id("ask").click()
    expect(card.get_by_test_id("ask-answer")).to_have_text("yellow")
    expect(card.get_by_test_id("ask-result")).to_contain_text("91%")
    expect(card.get_by_test_id("ask-alternatives")).to_have_text(
        "or: orange 5%, white 2%, red 1%")
    assert sent == [{"image_id": int(card.get_attribute("data-id") or 0),
                     "question": "what colour is the star?"}]
    heat = card.get_by_test_id("heatmap")
    expect(heat).to_be_visible()
    expect(card.get_by_test_id("explain")).to_have_attribute("aria-pressed", "false")
    expect(card.get_by_test_id("explain-result")).to_be_hidden()
    alpha = heat.evaluate("""c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return {w: c.width, h: c.height, peak: d[(2 * 8 + 6) * 4 + 3], corner: d[3]};
    }""")
    assert (alpha["w"], alpha["h"]) == (8, 8)
    assert alpha["peak"] > 200 and alpha["corner"] < 10
    img_box = card.locator("img").bounding_box()
    heat_box = heat.bounding_box()
    assert img_box and heat_box
    for key in ("x", "y", "width", "height"):
        assert abs(img_box[key] - heat_box[key]) < 1.5, (key, img_box, heat_box)
    # an empty question sends nothing
    card.get_by_test_id("ask-question").fill("   ")
    card.get_by_test_id("ask").click()
    expect(card.get_by_test_id("ask-question")).to_be_focused()
    assert len(sent) == 1


def test_not_available_reads_as_a_sentence_and_other_errors_use_the_banner(
        page: Page, server: Server) -> None:
    message = ("this model has no question-answering head; train one with "
               "`fusion-search train --only ask,describe`")

    def conflict(route: Any) -> None:
        route.fulfill(status=409, content_type="application/json", body=json.dumps(
            {"error": {"code": "not_available", "message": message}}))

    def gone(route: Any) -> None:
        route.fulfill(status=404, content_type="application/json", body=json.dumps(
            {"error": {"code": "not_found", "message": "item 7 not found"}}))

    open_home(page, server)
    page.route("**/api/v1/ask", conflict)
    page.route("**/api/v1/describe", conflict)
    card, _ = _first_card(page)
    _ask(card, QUESTION)
    result = card.get_by_test_id("ask-result")
    expect(result).to_have_text(f"Not available with this model: {message}")
    card.get_by_test_id("describe").click()
    expect(card.get_by_test_id("describe-result")).to_have_text(
        f"Not available with this model: {message}")
    expect(page.get_by_test_id("error")).to_be_hidden()

    page.unroute("**/api/v1/describe")
    page.route("**/api/v1/describe", gone)
    card.get_by_test_id("describe").click()
    banner = page.get_by_test_id("error")
    expect(banner).to_be_visible()
    expect(banner).to_have_text("Could not describe this image: Item 7 not found. [not_found]")
