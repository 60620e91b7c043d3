"""The page's search modes and relevance cut-off in a real browser (Debian's chromium,
Playwright) against a real server with the bundled model and the demo collection."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import (
    Page,
    Server,
    expect,
    open_home,
    result_ids,
    serving,
    text_search,
)

from app.demo import DEMO_IMAGE_SIZE
from models import synthetic as syn

# the page's threshold (app/static/js/results.js), chosen in docs/search-quality.md
MIN_MATCH = 0.275


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("e2e-modes"), demo_count=40) as srv:
        yield srv


@pytest.fixture(scope="module")
def named_id(server: Server) -> int:
    """An uncaptioned upload whose only words are its file name."""
    buf = io.BytesIO()
    syn.example("test", 777, size=DEMO_IMAGE_SIZE).image.save(buf, format="PNG")
    resp = server.post("/api/v1/images",
                       files={"files": ("IMG_2041.png", buf.getvalue(), "image/png")})
    assert resp.status_code == 201, resp.text
    return int(resp.json()["items"][0]["id"])


def _visible_ids(page: Page) -> list[int]:
    ids = page.locator('[data-testid="result"]:visible').evaluate_all(
        "els => els.map(e => e.dataset.id)")
    return [int(i) for i in ids]


def _set_cutoff(page: Page, on: bool) -> None:
    """Flip the switch as a user does, by its label (the styled track covers the input)."""
    switch = page.get_by_test_id("cutoff")
    if switch.is_checked() != on:
        page.get_by_text("Hide weak matches").click()
    expect(switch).to_be_checked(checked=on)


def _api_hits(server: Server, query: str, **body: Any) -> list[dict[str, Any]]:
    resp = server.post("/api/v1/search/text", json={"query": query, "k": 24, **body})
    assert resp.status_code == 200, resp.text
    return resp.json()["hits"]  # type: ignore[no-any-return]


def test_mode_switch_finds_a_file_name_by_words_and_by_both(
        page: Page, server: Server, named_id: int) -> None:
    open_home(page, server)
    mode = page.get_by_test_id("search-mode")
    expect(mode).to_have_value("vector")  # the API's default is the page's default
    _set_cutoff(page, False)
    text_search(page, "IMG_2041")
    assert result_ids(page)[0] != named_id  # the picture side cannot read a file name

    mode.select_option("keyword")  # re-runs the search
    expect(page.get_by_test_id("result")).to_have_count(1)
    assert result_ids(page) == [named_id]
    expect(page.get_by_test_id("result-caption")).to_have_text("IMG_2041.png")

    mode.select_option("hybrid")
    first = page.get_by_test_id("result").first
    expect(first).to_have_attribute("data-id", str(named_id))
    expect(first.get_by_test_id("result-ranks")).to_contain_text("words #1")
    assert len(result_ids(page)) > 1  # and the picture side's hits after it
    ranks = page.get_by_test_id("result-ranks").all_inner_texts()
    assert any("picture #1" in r for r in ranks), ranks


def test_odd_text_in_words_mode_is_an_empty_answer_not_an_error(
        page: Page, server: Server) -> None:
    open_home(page, server)
    page.get_by_test_id("search-mode").select_option("keyword")
    for query in ['"', "NEAR(", "* ^ :"]:  # no word any metadata holds
        text_search(page, query)
        expect(page.get_by_test_id("empty")).to_be_visible()
        expect(page.get_by_test_id("error")).to_be_hidden()


def test_weak_matches_hide_behind_a_toggle(page: Page, server: Server) -> None:
    items = server.get("/api/v1/images?limit=50").json()["items"]
    # the first stored demo caption whose answer holds both weak and strong hits
    for query in (it["caption"] for it in items if it["caption"]):
        hits = _api_hits(server, query, min_match=0)
        weak = [h["id"] for h in hits if h["match"] < MIN_MATCH]
        strong = [h["id"] for h in hits if h["match"] >= MIN_MATCH]
        if weak and strong:
            break
    else:
        pytest.fail("no demo caption has weak and strong hits among its first 24")
    open_home(page, server)
    expect(page.get_by_test_id("cutoff")).to_be_checked()
    text_search(page, query)
    assert _visible_ids(page) == strong
    toggle = page.get_by_test_id("show-weaker")
    expect(toggle).to_have_text(f"Show {len(weak)} weaker matches")
    expect(page.get_by_test_id("status")).to_contain_text(f"{len(weak)} weaker hidden")
    toggle.click()
    expect(page.locator('[data-testid="result"]:visible')).to_have_count(len(hits))
    assert _visible_ids(page) == [h["id"] for h in hits]  # in the answer's order
    expect(toggle).to_have_attribute("aria-pressed", "true")
    toggle.click()
    expect(page.locator('[data-testid="result"]:visible')).to_have_count(len(strong))
    # other views have no weak matches: the toggle goes with the search
    page.get_by_test_id("browse").click()
    expect(page.get_by_test_id("results-title")).to_have_text("Newest images")
    expect(toggle).to_be_hidden()
    text_search(page, query)
    expect(toggle).to_be_visible()
    # the switch off: every hit shown, no toggle
    _set_cutoff(page, False)
    expect(page.locator('[data-testid="result"]:visible')).to_have_count(len(hits))
    expect(toggle).to_be_hidden()


def test_nothing_strong_says_so_and_offers_the_weaker_ones(
        page: Page, server: Server, named_id: int) -> None:
    hits = _api_hits(server, "IMG_2041", mode="keyword", min_match=0)
    assert [h["id"] for h in hits] == [named_id]
    assert hits[0]["match"] < MIN_MATCH, "a file name is no description of the picture"
    open_home(page, server)
    page.get_by_test_id("search-mode").select_option("keyword")
    text_search(page, "IMG_2041")
    expect(page.get_by_test_id("empty")).to_have_text("No strong matches.")
    page.get_by_test_id("show-weaker").click()
    assert _visible_ids(page) == [named_id]
    expect(page.get_by_test_id("empty")).to_be_hidden()


def test_modes_work_by_keyboard(page: Page, server: Server, tmp_path: Path) -> None:
    open_home(page, server)
    page.get_by_test_id("search-mode").focus()
    page.keyboard.press("ArrowDown")  # vector -> keyword
    expect(page.get_by_test_id("search-mode")).to_have_value("keyword")


def test_upload_of_a_copy_says_so_and_the_duplicates_view_groups_them(
        page: Page, server: Server, tmp_path: Path) -> None:
    original = syn.example("test", 901, size=128).image
    buf = io.BytesIO()
    original.save(buf, format="PNG")
    resp = server.post("/api/v1/images", files={"files": ("orig.png", buf.getvalue(), "image/png")})
    assert resp.status_code == 201, resp.text
    orig_id = int(resp.json()["items"][0]["id"])
    copy = tmp_path / "copy.jpg"
    original.save(copy, format="JPEG", quality=70)

    open_home(page, server)
    page.get_by_test_id("upload-files").set_input_files(str(copy))
    page.get_by_test_id("upload-submit").click()
    expect(page.get_by_test_id("status")).to_contain_text(f"looks like a copy of #{orig_id}")
    copy_id = int(page.get_by_test_id("result").first.get_attribute("data-id") or 0)
    assert copy_id > orig_id

    page.get_by_test_id("show-duplicates").click()
    expect(page.get_by_test_id("results-title")).to_have_text("Near duplicates")
    groups = server.get("/api/v1/duplicates?limit=24").json()["groups"]
    heads = [g["item"]["id"] for g in groups]
    assert copy_id in heads and orig_id in heads  # each listed with the other
    orig_card = page.locator(f'[data-testid="result"][data-id="{orig_id}"]')
    expect(orig_card.get_by_test_id("result-duplicate-of")).to_contain_text(f"copy of #{copy_id}")
    expect(page.get_by_test_id("status")).to_contain_text("near duplicates among the newest")
    shown = result_ids(page)
    assert shown[:2] == [copy_id, orig_id]  # the newest image with copies, then its copy
