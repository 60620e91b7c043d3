"""Each benchmark runs end to end at a tiny size and writes its JSON and plot.

No timing is asserted: figures on a CI runner say nothing; the point is that
``fusion-search bench`` keeps working and keeps writing what docs/benchmarks.md reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.common import RESULTS_DIR, resolve_out
from bench.run import main

CASES = {
    "encode": (["--models", "fusion-tiny"], {"matmul_gflops", "models", "goals"},
               {"model", "precision", "plain_images_per_s", "ours_images_per_s",
                "image_speedup", "image_cosine_min", "plain_texts_per_s", "ours_texts_per_s",
                "text_cosine_min", "ours_image_matmul_fraction"}),
    "index": (["--sizes", "2000"], {"sizes", "k", "goal", "data_model"},
              {"n", "configs", "overhead", "choice", "flat_batch_qps"}),
    "http": (["--items", "200", "--duration", "0.3"], {"rows", "memory", "checks", "server"},
             {"scenario", "concurrency", "rps", "p50_ms", "p99_ms", "errors"}),
    "ingest": (["--images", "48"], {"end_to_end_images_per_s", "pure_encode_images_per_s",
                                   "ratio_end_to_end", "stages", "startup_s"}, set()),
}


@pytest.mark.parametrize("what", list(CASES))
def test_benchmark_writes_results(what: str, tmp_path: Path) -> None:
    extra, top_keys, row_keys = CASES[what]
    assert main([what, "--quick", "--out", str(tmp_path), *extra]) == 0
    result = json.loads((tmp_path / f"{what}.json").read_text())
    assert (tmp_path / f"{what}.png").stat().st_size > 0
    assert result["benchmark"] == what and result["quick"] is True
    assert {"cpu", "cores", "torch"} <= set(result["machine"])
    assert top_keys <= set(result)
    rows = {"encode": "models", "index": "sizes", "http": "rows"}.get(what)
    if rows:
        assert result[rows] and row_keys <= set(result[rows][0])
    if what == "index":
        size = result["sizes"][0]
        names = {c["name"] for c in size["configs"]}
        assert {"Flat (exact)", "FAISS HNSW32"} <= names
        assert all(0.0 <= r["recall"] <= 1.0 for c in size["configs"] for r in c["sweep"])
    if what == "http":
        assert result["checks"]["errors_total"] == 0
    if what == "ingest":
        assert '"added": 48' in result["command_summary"]


def test_results_folder_comes_from_the_argument_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FUSION_BENCH_OUT", str(tmp_path))
    assert resolve_out(None) == tmp_path
    assert resolve_out(str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.delenv("FUSION_BENCH_OUT")
    assert resolve_out(None) == RESULTS_DIR
