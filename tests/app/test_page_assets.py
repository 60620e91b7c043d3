"""The page's ES modules are all served, as JavaScript, from the installed package's folder.

A browser refuses a module script served with a non-JavaScript type and fails the whole
page when one import is missing; this walks the import graph from index.html over HTTP.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

import app

SCRIPT = re.compile(r'<script type="module" src="(/static/[^"]+)"></script>')
IMPORT = re.compile(r'^import (?:[^"]* from )?"(\./[\w.-]+\.js)";$', re.M)
STATIC = Path(app.__file__).resolve().parent / "static"


def test_every_module_of_the_page_is_served_as_javascript(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    entries = SCRIPT.findall(page.text)
    assert entries == ["/static/js/main.js"]
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        res = client.get(url)
        assert res.status_code == 200, url
        assert res.headers["content-type"].split(";")[0] in {
            "text/javascript", "application/javascript"}, url
        base = url.rsplit("/", 1)[0]
        todo += [f"{base}/{name[2:]}" for name in IMPORT.findall(res.text)]
    # every module in the folder is reachable from the entry: no dead file left behind
    on_disk = {f"/static/js/{p.name}" for p in (STATIC / "js").glob("*.js")}
    assert seen == on_disk
    assert len(seen) > 5
