"""`fusion-search ingest` encodes one batch while the previous one is being committed: the
summary still counts every image once, repeats across and inside batches are stored once, and
a failing commit stops the run with its error and nothing after it stored."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from api_support import scene_png

from app import cli
from app.service import SearchService
from index import StorageFull, Store


def _folder(tmp_path: Path) -> Path:
    """With --batch 2 the batches are [a ab] [b c] [d e] [f g]; ab is not an image, b and c are
    one image (inside a batch), so are e and f (across neighbouring batches) and g and a."""
    src = tmp_path / "src"
    src.mkdir()
    for name, scene in {"a": 0, "b": 1, "c": 1, "d": 2, "e": 3, "f": 3, "g": 0}.items():
        (src / f"{name}.png").write_bytes(scene_png(scene))
    (src / "ab.png").write_bytes(os.urandom(200))
    return src


def _summary(capsys: pytest.CaptureFixture[str]) -> dict[str, int]:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _stored_names(data: Path) -> list[str]:
    with Store.open(data, dim=128, model_name="fusion-tiny") as store:
        items, _ = store.list(0, 100)
    return sorted(it.original_name or "" for it in items)


def test_pipelined_ingest_counts_each_image_once(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    src, data = _folder(tmp_path), tmp_path / "data"
    args = ["ingest", str(src), "--data", str(data), "--batch", "2", "--workers", "2"]
    assert cli.main(args) == 0
    assert _summary(capsys) == {"added": 4, "already_present": 3, "bad": 1}
    assert _stored_names(data) == ["a.png", "b.png", "d.png", "e.png"]
    assert cli.main(args) == 0
    assert _summary(capsys) == {"added": 0, "already_present": 7, "bad": 1}


def test_a_failed_commit_stops_the_run_with_its_error(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    src, data = _folder(tmp_path), tmp_path / "data"
    commit = SearchService.commit_uploads
    calls = []

    def commit_or_fail(self: SearchService, uploads: list) -> list:  # type: ignore[type-arg]
        calls.append(len(uploads))
        if len(calls) == 2:
            raise StorageFull("no space left on device")
        return commit(self, uploads)

    monkeypatch.setattr(SearchService, "commit_uploads", commit_or_fail)
    with pytest.raises(StorageFull):
        cli.main(["ingest", str(src), "--data", str(data), "--batch", "2", "--workers", "2"])
    assert len(calls) == 2  # the second batch's commit failed; the third and fourth never ran
    assert _stored_names(data) == ["a.png"]
