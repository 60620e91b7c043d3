"""A Python client generated from the live /openapi.json works end to end.

openapi-python-client (the test extra) turns the spec of a running `fusion-search serve` into a
package; the test imports it and goes upload -> text search -> image search (file and id) ->
composed search (id and file) -> list -> delete through it, as a user of the REST API would.
"""

from __future__ import annotations

import importlib
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from api_support import scene, scene_png
from serve_support import ServeProcess

GENERATOR = shutil.which("openapi-python-client",
                         path=os.pathsep.join([str(Path(sys.executable).parent),
                                               os.environ.get("PATH", "")]))
if GENERATOR is None:
    message = "openapi-python-client is missing: pip install -e '.[test]'"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)

PACKAGE = "fusion_generated_client"
TAG = "genclient"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    srv = ServeProcess(tmp_path_factory.mktemp("generated-client"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client_package(server: ServeProcess,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client generated from the server's own /openapi.json, imported."""
    out = tmp_path_factory.mktemp("generated")
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent),
                                                 os.environ.get("PATH", "")]))
    proc = subprocess.run(
        [str(GENERATOR), "generate", "--url", f"{server.url}/openapi.json", "--meta", "none",
         "--output-path", str(out / PACKAGE)],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def mod(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


def png_file(package: ModuleType, i: int) -> Any:
    types = mod(package, "types")
    return types.File(payload=io.BytesIO(scene_png(i)), file_name=f"scene{i}.png",
                      mime_type="image/png")


def test_generated_client_round_trip(server: ServeProcess, client_package: ModuleType) -> None:
    pkg = client_package
    images = {name: mod(pkg, f"api.images.{name}")
              for name in ("upload_images", "list_images", "delete_image")}
    search = {name: mod(pkg, f"api.search.{name}")
              for name in ("search_text", "search_image", "search_image_upload",
                           "search_composed", "search_composed_upload")}
    models = mod(pkg, "models")
    client = pkg.Client(base_url=server.url, timeout=httpx.Timeout(120),
                        raise_on_unexpected_status=True)

    # upload: three scenes, each with its own caption, one request each; a file field is a File
    ids: dict[int, int] = {}
    for i in range(3):
        resp = images["upload_images"].sync_detailed(client=client, body=models.BodyUploadImages(
            files=[png_file(pkg, i)], caption=scene(i).caption, tags=[TAG]))
        assert resp.status_code == 201, resp.content
        (item,) = resp.parsed.items
        assert item.caption == scene(i).caption and item.tags == [TAG]
        assert item.original_name == f"scene{i}.png" and item.content_type == "image/png"
        ids[i] = item.id

    # text search, filtered to the uploads
    found = search["search_text"].sync(client=client, body=models.TextSearch(
        query=scene(0).caption, k=5, tags=[TAG]))
    assert isinstance(found, models.TextSearchResponse)
    assert sorted(h.id for h in found.hits) == sorted(ids.values())
    by_name = search["search_text"].sync(client=client, body=models.TextSearch(
        query="scene2.png", k=5, tags=[TAG], mode=models.TextSearchMode.KEYWORD))
    assert isinstance(by_name, models.TextSearchResponse)
    assert [(h.id, h.keyword_rank) for h in by_name.hits] == [(ids[2], 1)]

    # image search by an uploaded file: the same pixels come first
    by_file = search["search_image_upload"].sync(client=client, body=models.ImageUploadSearch(
        file=png_file(pkg, 1), k=3, tags=TAG))
    assert isinstance(by_file, models.SearchResponse)
    assert by_file.hits[0].id == ids[1] and by_file.hits[0].score > 0.99

    # image search by id: the query image itself is left out
    by_id = search["search_image"].sync(client=client, body=models.ImageIdSearch(
        image_id=ids[1], k=3, tags=[TAG]))
    assert isinstance(by_id, models.SearchResponse)
    assert sorted(h.id for h in by_id.hits) == sorted([ids[0], ids[2]])

    # composed search, by id and by an uploaded reference image
    composed = search["search_composed"].sync(client=client, body=models.ComposedIdSearch(
        image_id=ids[0], text="make it blue", k=3, tags=[TAG]))
    assert isinstance(composed, models.SearchResponse)
    assert composed.hits and ids[0] not in {h.id for h in composed.hits}
    composed_file = search["search_composed_upload"].sync(
        client=client, body=models.ComposedUploadSearch(file=png_file(pkg, 2),
                                                        text="make it blue", k=3, tags=TAG))
    assert isinstance(composed_file, models.SearchResponse)
    assert {h.id for h in composed_file.hits} <= set(ids.values()) and composed_file.hits

    # list, delete, list again
    page = images["list_images"].sync(client=client, tag=TAG)
    assert isinstance(page, models.ItemPage)
    assert page.total == 3 and {it.id for it in page.items} == set(ids.values())
    gone = images["delete_image"].sync(ids[2], client=client)
    assert isinstance(gone, models.ItemOut) and gone.id == ids[2]
    page = images["list_images"].sync(client=client, tag=TAG)
    assert page.total == 2 and ids[2] not in {it.id for it in page.items}
    missing = images["delete_image"].sync_detailed(ids[2], client=client)
    assert missing.status_code == 404
    assert missing.parsed.error.code == "not_found"
