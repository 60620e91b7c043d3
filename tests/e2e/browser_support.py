"""What the browser tests share: a uvicorn server in a subprocess, Debian's chromium driven by
Playwright, and the steps a user takes on the page.

`make browser` (run by `make test`) installs chromium from Debian; Playwright's own browser
download is never used. The `browser` and `page` fixtures are in conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from http_checks import NotReady, missing_tool, start_uvicorn, terminate, wait_ready

from app.demo import DEMO_IMAGE_SIZE
from models import synthetic as syn

try:
    from playwright import sync_api
except ImportError:
    missing_tool("playwright is not installed: pip install -e '.[test]'")
Browser = sync_api.Browser
Page = sync_api.Page
expect = sync_api.expect

CHROMIUM = os.environ.get("FUSION_E2E_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
if not Path(CHROMIUM).exists():
    missing_tool(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")

DEMO_COUNT = 60
TIMEOUT_MS = 30_000  # the machine may be busy; searches usually take milliseconds

expect.set_options(timeout=TIMEOUT_MS)


# ---- a real server ---------------------------------------------------------------------------

@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    data_dir: Path

    def info(self, key: str | None = None) -> dict[str, Any]:
        headers = {"X-API-Key": key} if key else {}
        r = httpx.get(f"{self.url}/api/v1/info", headers=headers, timeout=30)
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=30)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=60, **kwargs)


def spawn_server(root: Path, demo_count: int = DEMO_COUNT, **env: str) -> Server:
    """Start uvicorn on a port of its own with a fresh data dir; see ready."""
    root.mkdir(parents=True, exist_ok=True)
    data_dir = root / "data"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_")}
    environ.update({
        "FUSION_DATA_DIR": str(data_dir), "FUSION_DEMO": "true",
        "FUSION_DEMO_COUNT": str(demo_count), "HF_HUB_OFFLINE": "1",
        # FAISS's and torch's OpenMP threads spin on busy shared cores; the data here is tiny
        "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
        **env,
    })
    log = root / "server.log"
    proc, port = start_uvicorn(environ, root, log)
    return Server(f"http://127.0.0.1:{port}", proc, log, data_dir)


def ready(server: Server, timeout: float = 300) -> Server:
    """Return once /ready answers 200; stop the server and raise if it exits or never does."""
    try:
        wait_ready(server.proc, server.url, timeout)
    except NotReady as exc:
        stop_server(server)
        raise RuntimeError(f"{exc}:\n{server.log.read_text()[-3000:]}") from None
    return server


def stop_server(server: Server) -> None:
    terminate(server.proc, grace=15)


@contextlib.contextmanager
def serving(root: Path, demo_count: int = DEMO_COUNT, **env: str) -> Iterator[Server]:
    """A ready server over a fresh demo collection, stopped on the way out."""
    srv = spawn_server(root, demo_count, **env)
    try:
        yield ready(srv)
    finally:
        stop_server(srv)


def new_page(browser: Browser, width: int = 1280, height: int = 900) -> tuple[Page, list[str]]:
    """A page in a context of its own, and the list its JavaScript errors are added to."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page, errors


# ---- on the page ------------------------------------------------------------------------------

def scene_file(tmp_path: Path, split: str, i: int) -> tuple[Path, str]:
    """A generated scene saved as PNG, and its true caption."""
    ex = syn.example(split, i, size=DEMO_IMAGE_SIZE)
    path = tmp_path / f"{split}_{i}.png"
    ex.image.save(path, format="PNG")
    return path, ex.caption


def open_home(page: Page, server: Server, query: str = "") -> None:
    page.goto(f"{server.url}/" + (f"?q={query}" if query else ""))
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.get_by_test_id("result").first).to_be_visible()


def text_search(page: Page, query: str, tags: str = "") -> None:
    page.get_by_test_id("tag-filter").fill(tags)
    box = page.get_by_test_id("q")
    box.fill(query)
    box.press("Enter")  # Enter submits
    expect(page.get_by_test_id("results-title")).to_contain_text(query)
    expect(page.locator("#main")).to_have_attribute("aria-busy", "false")


def result_ids(page: Page) -> list[int]:
    ids = page.get_by_test_id("result").evaluate_all("els => els.map(e => e.dataset.id)")
    return [int(i) for i in ids]


def card(page: Page, item_id: int) -> Any:
    return page.locator(f'[data-testid="result"][data-id="{item_id}"]')


def wait_thumbnails(page: Page) -> None:
    """Every shown thumbnail in the first screen has loaded (weak matches hidden behind "show
    weaker matches" are not shown, so their lazy images never load)."""
    page.wait_for_function("""() => {
        const imgs = [...document.querySelectorAll('#results img')]
            .filter(i => i.offsetParent !== null)
            .filter(i => i.getBoundingClientRect().top < window.innerHeight);
        return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
    }""")
