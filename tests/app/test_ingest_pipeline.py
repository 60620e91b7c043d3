"""`fusion-search ingest` encodes one batch while the previous one is being committed: the
summary still counts every image once, repeats across and inside batches are stored once, and
a failing commit stops the run with its error and nothing after it stored."""

from __future__ import annotations

import io
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


def _jpeg(size: tuple[int, int], seed: int, orientation: int | None = None) -> bytes:
    """A generated scene resized to ``size``, as a JPEG; with an EXIF orientation if given."""
    from PIL import Image

    from models import synthetic

    img = synthetic.example("test", seed, size=256).image.resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def test_reduced_jpeg_decode_keeps_the_original_size_and_the_embedding() -> None:
    """What ingest does: JPEGs decoded by libjpeg at a reduced scale, no smaller than twice
    the model input, give the embedding of the full decode; the recorded size is the file's."""
    from models import decode_image, load_model

    model = load_model()
    h, w = model.image_size
    reduce_to = (2 * w, 2 * h)
    cases = [((256, 256), None), ((512, 358), None), ((333, 233), None), ((1000, 700), None),
             ((640, 400), 6), ((640, 400), 3)]
    full, reduced = [], []
    for seed, (size, orientation) in enumerate(cases):
        data = _jpeg(size, seed, orientation)
        f, r = decode_image(data), decode_image(data, reduce_to=reduce_to)
        assert (r.width, r.height) == (f.width, f.height) == f.image.size
        turned = orientation in (5, 6, 7, 8)
        assert (f.width, f.height) == (size[::-1] if turned else size)
        assert r.image.width >= reduce_to[0] and r.image.height >= reduce_to[1]
        assert r.image.width * r.image.height <= f.width * f.height
        assert (r.image.width > r.image.height) == (f.width > f.height)  # same orientation
        assert (r.format, r.content_type, r.ext) == (f.format, f.content_type, f.ext)
        full.append(f.image)
        reduced.append(r.image)
    assert reduced[0].size == (128, 128) and reduced[3].size == (250, 175)  # 1/2 and 1/4
    a, b = model.encode_images(full), model.encode_images(reduced)
    assert float((a * b).sum(axis=1).min()) >= 0.99


def test_reduced_decode_leaves_other_formats_and_the_checks_alone() -> None:
    from models import BadImage, ImageTooLarge, decode_image

    png = scene_png(0)
    assert decode_image(png, reduce_to=(8, 8)).image.size == decode_image(png).image.size
    jpeg = _jpeg((400, 300), 0)
    with pytest.raises(ImageTooLarge):
        decode_image(jpeg, max_pixels=400 * 300 - 1, reduce_to=(8, 8))
    with pytest.raises(BadImage):
        decode_image(jpeg[: len(jpeg) // 2], reduce_to=(8, 8))  # truncated
    with pytest.raises(ValueError):
        decode_image(jpeg, reduce_to=(0, 8))


def test_ingest_records_each_jpeg_at_its_original_size(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    src, data = tmp_path / "src", tmp_path / "data"
    src.mkdir()
    (src / "wide.jpg").write_bytes(_jpeg((600, 400), 1))
    (src / "turned.jpg").write_bytes(_jpeg((600, 400), 2, orientation=6))
    assert cli.main(["ingest", str(src), "--data", str(data)]) == 0
    assert _summary(capsys) == {"added": 2, "already_present": 0, "bad": 0}
    with Store.open(data, dim=128, model_name="fusion-tiny") as store:
        items, _ = store.list(0, 10)
        sizes = {it.original_name: (it.width, it.height) for it in items}
        # the stored files are the original bytes
        for it in items:
            path, _ = store.file_path(it.id)
            assert path.read_bytes() == (src / (it.original_name or "")).read_bytes()
    assert sizes == {"wide.jpg": (600, 400), "turned.jpg": (400, 600)}


def test_a_duplicate_deleted_before_its_commit_is_encoded_and_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An image already stored gets a placeholder when its batch is prepared; if the stored
    original is deleted before the commit, ingest encodes it after all instead of failing."""
    src, data = _folder(tmp_path), tmp_path / "data"
    first = ["ingest", str(src / "a.png"), "--data", str(data)]
    assert cli.main(first) == 0
    assert _summary(capsys)["added"] == 1
    prepare = SearchService.prepare_uploads
    deleted: list[str | None] = []

    def prepare_then_delete(self: SearchService, records: list) -> list:  # type: ignore[type-arg]
        uploads = prepare(self, records)
        if not deleted:
            for u in uploads:
                item = self.store.get_by_sha(u.sha256)
                if item is not None:
                    self.delete(item.id)
                    deleted.append(item.original_name)
        return uploads

    commit = SearchService.commit_uploads
    failed: list[str] = []

    def commit_noting_failures(self: SearchService, uploads: list) -> list:  # type: ignore[type-arg]
        try:
            return commit(self, uploads)
        except ValueError as exc:
            failed.append(str(exc))
            raise

    monkeypatch.setattr(SearchService, "prepare_uploads", prepare_then_delete)
    monkeypatch.setattr(SearchService, "commit_uploads", commit_noting_failures)
    assert cli.main(["ingest", str(src), "--data", str(data), "--batch", "2"]) == 0
    assert deleted == ["a.png"] and len(failed) == 1  # the placeholder was refused once
    assert _summary(capsys) == {"added": 4, "already_present": 3, "bad": 1}
    assert _stored_names(data) == ["a.png", "b.png", "d.png", "e.png"]
    with Store.open(data, dim=128, model_name="fusion-tiny") as store:
        items, _ = store.list(0, 10)
        for it in items:
            assert store.embedding(it.id).any()
