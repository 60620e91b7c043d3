"""The browser fixtures every browser test module uses; the server each module needs is its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from browser_support import Browser, Page


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # imported here: browser_support skips (or fails, in CI) when playwright or chromium is missing
    from browser_support import CHROMIUM, CHROMIUM_ARGS, sync_api

    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page; the test fails when the page raised a JavaScript error."""
    from browser_support import new_page

    pg, errors = new_page(browser)
    yield pg
    pg.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
