"""Each benchmark runs end to end at a tiny size and writes its JSON and plot, then the report
renders them into a page.

No timing is asserted: figures on a CI runner say nothing; the point is that
``fusion-search bench`` keeps working and keeps writing what docs/benchmarks.md reads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench import report
from bench.common import QUICK_DIR, RESULTS_DIR, resolve_out
from bench.run import main
from models.precision import cpu_info

CASES = {
    "encode": (["--models", "fusion-tiny"], {"matmul_gflops", "models", "goals"},
               {"model", "precision", "plain_images_per_s", "ours_images_per_s",
                "image_speedup", "image_cosine_min", "plain_texts_per_s", "ours_texts_per_s",
                "text_cosine_min", "ours_image_matmul_fraction"}),
    "index": (["--sizes", "2000"], {"sizes", "k", "goal", "data_model"},
              {"n", "configs", "overhead", "choice", "flat_batch_qps"}),
    "http": (["--items", "200", "--duration", "0.2"], {"rows", "memory", "checks", "server"},
             {"scenario", "concurrency", "rps", "p50_ms", "p99_ms", "errors"}),
    "ingest": (["--images", "48"], {"end_to_end_images_per_s", "pure_encode_images_per_s",
                                   "ratio_end_to_end", "stages", "startup_s"}, set()),
    "memory": (["--memory-items", "300"], {"rows", "rerank_depth"},
               {"items", "index", "rss_idle", "rss_after_search", "rss_peak", "token_bytes"}),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder all the benchmarks of this module write to, as ``bench all`` does."""
    return tmp_path_factory.mktemp("results")


@pytest.mark.parametrize("what", list(CASES))
def test_benchmark_writes_results(what: str, results: Path) -> None:
    extra, top_keys, row_keys = CASES[what]
    assert main([what, "--quick", "--out", str(results), *extra]) == 0
    result = json.loads((results / f"{what}.json").read_text())
    assert (results / f"{what}.png").stat().st_size > 0
    assert result["benchmark"] == what and result["quick"] is True
    assert {"cpu", "cores", "torch"} <= set(result["machine"])
    cpu = cpu_info()  # the machine line names this CPU and the flags its figures depend on
    assert result["machine"]["cpu"] == cpu.model and cpu.model
    assert result["machine"]["cpu_flags"] == list(cpu.flags)
    assert result["machine"]["native_bf16"] is cpu.native_bf16
    assert result["run"]["command"].startswith(f"fusion-search bench {what} --quick --out ")
    assert result["run"]["wall_s"] > 0
    if Path("/proc/stat").is_file():  # the host's share of the CPU time while it ran
        assert 0.0 <= result["run"]["steal_pct"] <= 100.0
    assert top_keys <= set(result)
    rows = {"encode": "models", "index": "sizes", "http": "rows", "memory": "rows"}.get(what)
    if rows:
        assert result[rows] and row_keys <= set(result[rows][0])
    if what == "index":
        size = result["sizes"][0]
        names = {c["name"] for c in size["configs"]}
        assert {"Flat (exact)", "FAISS HNSW32"} <= names
        assert all(0.0 <= r["recall"] <= 1.0 for c in size["configs"] for r in c["sweep"])
    if what == "http":
        assert result["checks"]["errors_total"] == 0
        scenarios = {r["scenario"] for r in result["rows"]}
        assert {"search", "search+rerank20", "upload", "search+rerank50",
                "search [ViT-B-32]"} <= scenarios
    if what == "ingest":
        assert '"added": 48' in result["command_summary"]
    if what == "memory":
        row, wide = result["rows"]
        assert row["items"] == 300 and row["rss_peak"] >= row["rss_idle"] > 0
        # end to end: re-ranked searches on the bundled model and on 512-d vectors
        assert (row["model"], row["dim"], row["rerank"]) == ("fusion-tiny", 128, True)
        assert (wide["model"], wide["dim"], wide["rerank"]) == ("fusion-tiny-512", 512, True)
        assert wide["token_bytes"] == row["token_bytes"] > 0
        for r in (row, wide):
            assert [x["concurrency"] for x in r["latency"]] == [1, 4]
            assert all(x["errors"] == 0 and 0 < x["p50_ms"] <= x["p99_ms"] for x in r["latency"])


def test_report_renders_what_was_measured_and_names_the_rest(results: Path) -> None:
    """Runs after the benchmarks above (file order): a page with their commands, plots and
    goal lines; a goal whose figure is missing, or measured at another size, is not judged."""
    if not list(results.glob("*.json")):
        pytest.skip("needs the benchmark tests above to have run in this session")
    doc = results / "page" / "benchmarks.md"
    assert main(["report", "--out", str(results), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "Quick (CI-sized) results" in text
    cpu = cpu_info()
    flags = ", ".join(cpu.flags) or "none"
    assert (f"CPU **{cpu.model}** (from {cpu.source}), flags {flags} (of those checked: avx2, "
            "avx512f, avx512_vnni, avx512_bf16, amx_bf16)") in text
    assert "files come from one run," in text  # the quick benchmarks above, one after another
    for what in CASES:
        if (results / f"{what}.json").is_file():
            assert f"fusion-search bench {what} --quick" in text
            assert f"](../{what}.png)" in text
    section = text.split("## Goals", 1)[1].split("\n## ", 1)[0]
    goal_lines = [line for line in section.splitlines() if line.startswith("| ")][1:]
    # 14 of the benchmark issue, 1M items end to end, 2 runtimes, 4 scale-out, 1 GPU
    assert len(goal_lines) == 22
    # nothing here ran at the sizes (1M vectors, 100k items, 10k JPEGs): never "met"
    assert not any("goal met" in line for line in goal_lines)
    assert all(re.search(r"not measured|reported", line) for line in goal_lines)


def test_report_without_results_says_not_measured(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    report.write(tmp_path, doc)
    text = doc.read_text()
    section = text.split("## Goals", 1)[1].split("\n## ", 1)[0]
    goal_lines = [line for line in section.splitlines() if line.startswith("| ")][1:]
    # 14 of the benchmark issue, 1M items end to end, 2 runtimes, 4 scale-out, 1 GPU
    assert len(goal_lines) == 22
    assert all(line.endswith("| not measured |") for line in goal_lines)


def test_results_folder_comes_from_the_argument_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FUSION_BENCH_OUT", str(tmp_path))
    assert resolve_out(None) == tmp_path
    assert resolve_out(str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.delenv("FUSION_BENCH_OUT")
    assert resolve_out(None) == RESULTS_DIR
    assert resolve_out(None, quick=True) == QUICK_DIR
    assert report.default_doc(RESULTS_DIR) == report.DOC
    assert report.default_doc(QUICK_DIR) == QUICK_DIR / "benchmarks.md"
