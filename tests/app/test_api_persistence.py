"""What was acknowledged survives a restart of the app on the same data dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_support import (
    API,
    Apps,
    encode,
    hit_ids,
    scene,
    scene_png,
    search_text,
    upload,
    upload_scene,
)
from fastapi.testclient import TestClient


def snapshot_file(data_dir: Path) -> Path:
    return data_dir / "index" / "vectors.faiss"


def upload_pair(client: TestClient, i: int) -> tuple[int, int]:
    """Scene ``i`` stored twice: as PNG with its caption and as a JPEG copy; returns both ids."""
    original = upload_scene(client, i)["id"]
    (copy,) = upload(client, encode(scene(i).image, "JPEG", quality=95))
    return original, copy["id"]


def assert_searchable(client: TestClient, pairs: dict[int, tuple[int, int]], k: int) -> None:
    """Each scene's original is found by its caption, and it and its copy find each other first.

    Only stored vectors are compared with each other, so this holds for an untrained model too
    (whose random weights differ from one load to the next): it checks that the restored index
    holds the right vector under the right id.
    """
    for i, (original, copy) in pairs.items():
        assert original in hit_ids(search_text(client, scene(i).caption, k=k, rerank=False))
        for query, expected in ((copy, original), (original, copy)):
            resp = client.post(f"{API}/search/image", json={"image_id": query, "k": 1})
            assert resp.status_code == 200, resp.text
            assert hit_ids(resp.json()) == [expected]


def test_items_survive_a_restart(apps: Apps) -> None:
    first = apps.start()
    pairs = {i: upload_pair(first, i) for i in range(3)}
    before = first.get(f"{API}/images").json()
    apps.stop(first)  # lifespan shutdown

    second = apps.start()
    after = second.get(f"{API}/images").json()
    assert after == before and after["total"] == 6
    assert_searchable(second, pairs, k=6)
    for i, (original, _) in pairs.items():
        assert second.get(f"{API}/images/{original}/file").content == scene_png(i)
    (again,) = upload(second, scene_png(0))
    assert again["duplicate"] is True and again["id"] == pairs[0][0]
    (new,) = upload(second, scene_png(3))
    assert new["id"] > max(max(p) for p in pairs.values())
    info = second.get(f"{API}/info").json()
    assert (info["items"], info["vectors"]) == (7, 7)


def test_rows_newer_than_the_snapshot_are_replayed(apps: Apps, tmp_path: Path) -> None:
    """A process that dies between snapshots leaves an old snapshot; the catalog fills it in."""
    data = tmp_path / "data"
    first = apps.start(data, snapshot_every=10_000)
    early = {i: upload_pair(first, i) for i in range(2)}
    apps.stop(first)  # a clean stop writes the snapshot: it holds the four early rows
    stale = snapshot_file(data).read_bytes()

    second = apps.start(data, snapshot_every=10_000)
    late = {i: upload_pair(second, i) for i in range(2, 5)}
    deleted = early.pop(0)
    for item_id in deleted:
        assert second.delete(f"{API}/images/{item_id}").status_code == 200
    assert snapshot_file(data).read_bytes() == stale  # nothing snapshotted while serving
    apps.stop(second)
    snapshot_file(data).write_bytes(stale)  # what a kill -9 would have left on disk

    third = apps.start(data, snapshot_every=10_000)
    info = third.get(f"{API}/info").json()
    assert (info["items"], info["vectors"]) == (8, 8)
    assert_searchable(third, {**early, **late}, k=8)
    everything = hit_ids(search_text(third, "a shape", k=100))
    expected = [item_id for pair in (*early.values(), *late.values()) for item_id in pair]
    assert sorted(everything) == sorted(expected)  # the deleted rows were dropped on replay


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_a_lost_or_broken_snapshot_is_rebuilt(apps: Apps, tmp_path: Path, damage: str) -> None:
    data = tmp_path / "data"
    first = apps.start(data)
    pairs = {i: upload_pair(first, i) for i in range(2)}
    apps.stop(first)
    if damage == "missing":
        snapshot_file(data).unlink()
    else:
        snapshot_file(data).write_bytes(b"\x00not a faiss index" * 100)

    second = apps.start(data)
    assert second.get("/ready").status_code == 200
    assert second.get(f"{API}/info").json()["vectors"] == 4
    assert_searchable(second, pairs, k=4)
