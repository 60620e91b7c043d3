"""`fusion-search ingest --ray` on a real local Ray cluster (2 CPUs, started once for the module):
the same embeddings as the single-process ingest, nothing added by a re-run, bad files reported,
and an encoder actor that dies mid-batch costs a retry, not a duplicate or a lost image."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from api_support import scene_png

from app import cli
from app.ingest import ingest
from index import Store

if os.environ.get("CI"):  # CI installs the scale extra: a missing Ray fails there
    import ray
else:
    ray = pytest.importorskip("ray", reason="the scale extra (ray[data]) is not installed")

from app.ingest_ray import ImageEncoder, ingest_ray, plan_encoders  # noqa: E402

IMAGES = 200
BAD = {"truncated.png": scene_png(0)[:60], "notes.jpg": b"not a picture"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster for the module (about 3.5 s to start on an idle 2-core machine; on
    one whose cores are all taken Ray may give up waiting 30 s for its raylet)."""
    # the crashing encoder below is defined here, a module Ray's workers cannot import
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 2**20)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("ray-src")
    for i in range(IMAGES):
        (src / f"scene-{i:03d}.png").write_bytes(scene_png(i))
    for name, data in BAD.items():
        (src / name).write_bytes(data)
    return src


@pytest.fixture(scope="module")
def ray_data(cluster: None, source: Path, tmp_path_factory: pytest.TempPathFactory,
             ) -> tuple[Path, list[str]]:
    """A data dir filled by `fusion-search ingest --ray auto`, and what the command printed."""
    data = tmp_path_factory.mktemp("ray-data")
    out = data.parent / "ray-ingest.out"
    saved = sys.stdout, sys.stderr
    with out.open("w") as fh:
        sys.stdout = sys.stderr = fh
        try:
            code = cli.main(["ingest", str(source), "--data", str(data), "--ray", "auto",
                             "--batch", "32"])
        finally:
            sys.stdout, sys.stderr = saved
    assert code == 0
    return data, out.read_text().splitlines()


def _by_sha(data: Path) -> dict[str, np.ndarray]:
    with Store.open(data, dim=128, model_name="fusion-tiny") as store:
        items, total = store.list(0, 1000)
        assert total == len(items)
        return {it.sha256: store.embedding(it.id) for it in items}


def test_ray_ingest_stores_what_the_single_process_ingest_stores(
        ray_data: tuple[Path, list[str]], source: Path, tmp_path: Path) -> None:
    data, lines = ray_data
    summary = [line for line in lines if line.startswith('{"added"')][-1]
    assert json.loads(summary) == {"added": IMAGES, "already_present": 0, "bad": len(BAD)}
    for name in BAD:  # each bad file named on stderr with why it was skipped
        assert any(f"skipped {source / name}: " in line for line in lines)

    single = tmp_path / "single"
    report = ingest([str(source)], data_dir=single, batch=32)
    assert report.summary() == {"added": IMAGES, "already_present": 0, "bad": len(BAD)}
    by_ray, by_one = _by_sha(data), _by_sha(single)
    assert by_ray.keys() == by_one.keys()
    cosines = [float(by_ray[sha] @ by_one[sha]) for sha in by_one]
    assert min(cosines) >= 0.999


def test_a_rerun_adds_nothing(ray_data: tuple[Path, list[str]], source: Path) -> None:
    data, _ = ray_data
    report = ingest_ray([str(source)], data_dir=data, batch=32)
    assert report.summary() == {"added": 0, "already_present": IMAGES, "bad": len(BAD)}
    assert len(_by_sha(data)) == IMAGES


class CrashOnce(ImageEncoder):
    """Dies (the whole actor process) the first time it is handed the marked image."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for path in batch["path"]:
            marker = Path(str(path)).with_suffix(".crashed")
            if Path(str(path)).name == "crash-here.png" and not marker.exists():
                marker.touch()
                os._exit(1)
        return super().__call__(batch)


def test_a_killed_encoder_batch_is_retried_without_duplicates(cluster: None,
                                                              tmp_path: Path) -> None:
    src, data = tmp_path / "src", tmp_path / "data"
    src.mkdir()
    names = [f"scene-{i:02d}.png" for i in range(15)] + ["crash-here.png"]
    for i, name in enumerate(names):
        (src / name).write_bytes(scene_png(300 + i))
    report = ingest_ray([str(src)], data_dir=data, batch=4, encoder_cls=CrashOnce)
    assert (src / "crash-here.crashed").exists()  # the actor did die on that batch
    assert report.summary() == {"added": len(names), "already_present": 0, "bad": 0}
    with Store.open(data, dim=128, model_name="fusion-tiny") as store:
        items, total = store.list(0, 100)
    assert total == len(names)
    assert sorted(it.original_name or "" for it in items) == sorted(names)


def test_the_plan_puts_one_encoder_on_each_gpu_or_shares_the_cpus() -> None:
    gpu = plan_encoders("auto", {"CPU": 16.0, "GPU": 4.0}, None)
    assert (gpu.encoders, gpu.device, gpu.num_gpus) == (4, "cuda", 1.0)
    cpu = plan_encoders("auto", {"CPU": 2.0}, None)
    assert (cpu.encoders, cpu.device, cpu.num_gpus) == (2, "cpu", 0.0)
    assert cpu.encoders * cpu.num_cpus + cpu.tasks * 0.25 <= 2.0  # never more than the cluster
    assert plan_encoders("cpu", {"CPU": 8.0, "GPU": 1.0}, 3).device == "cpu"
    from app.ingest import IngestSettingsError

    with pytest.raises(IngestSettingsError, match="has none"):
        plan_encoders("cuda:1", {"CPU": 2.0}, None)
    with pytest.raises(IngestSettingsError, match="unknown device"):
        plan_encoders("tpu", {"CPU": 2.0}, None)
