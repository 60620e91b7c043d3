"""The benchmarks page's Scale-out section, rendered from small hand-written result files shaped
as bench.replicas, bench.ingest_ray and bench.catalog_writes write them: the figures a reader
sees, the ratios within one file, and "not measured" for a file that is missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import report

CORES = 2


def _machine(load: float) -> dict[str, Any]:
    return {"cpu": "Test CPU 9000", "cpu_flags": ["avx2", "avx512f"], "cpu_source": "/proc/cpuinfo",
            "cores": CORES, "ram_gib": 8.0, "native_bf16": False, "gpu": None, "python": "3.11",
            "torch": "2.x", "torch_threads": 2, "open_clip": "3.x", "faiss": "1.x",
            "numpy": "2.x", "date_utc": "2026-12-01T10:00:00Z",
            "loadavg_1_5_15": [load, 1.0, 1.0]}


def _file(name: str, command: str, load: float = 0.5, **data: Any) -> dict[str, Any]:
    return {"benchmark": name, "quick": False,
            "run": {"command": command, "wall_s": 10.0, "cpu_s": 5.0},
            "machine": _machine(load), **data}


def _stats(p50: float, p99: float, n: int) -> dict[str, Any]:
    return {"p50_ms": p50, "p90_ms": p50 * 2, "p99_ms": p99, "mean_ms": p50, "n": n}


STORE = _file("replicas-store", "python -m bench.replicas --store-only --out bench/results",
              load=7.5, items=200, follow_interval_s=0.2, lag=_stats(167.7, 1005.6, 200))
REPLICAS = _file(
    "replicas", "fusion-search bench replicas", follow_interval_s=0.2,
    lag={"uploads": 60, "poll_ms": 2.0, "lag": _stats(212.0, 480.0, 60), "lags_ms": []},
    items=5000, duration_s=20.0, concurrency=8, speedup_2_workers=1.75,
    search=[{"workers": 1, "concurrency": 8, "requests": 800, "rps": 40.0, "errors": 0,
             "p50_ms": 190.0, "p99_ms": 400.0},
            {"workers": 2, "concurrency": 8, "requests": 1400, "rps": 70.0, "errors": 0,
             "p50_ms": 110.0, "p99_ms": 300.0}])
RAY = _file(
    "ingest_ray", "python -m bench.ingest_ray", images=2000, size=256, cores=CORES,
    ray_over_single=0.5, contended=False,
    runs=[{"mode": "single process", "images": 2000, "wall_s": 40.0, "startup_s": 8.0,
           "images_per_s": 50.0, "steady_images_per_s": 62.5, "rerun_s": 9.0},
          {"mode": "ray (local cluster)", "images": 2000, "wall_s": 80.0, "startup_s": 30.0,
           "images_per_s": 25.0, "steady_images_per_s": 40.0, "rerun_s": 31.0}])


def _scenario(backend: str, batch: int, writers: int, rate: float) -> dict[str, Any]:
    return {"backend": backend, "batch": batch, "writers": writers, "rows": 1024,
            "rows_per_s": rate, "tx_p50_ms": 4.5, "tx_p99_ms": 31.0, "transactions": 16}


CATALOG = _file(
    "catalog-writes", "python -m bench.catalog_writes", row={"dim": 512, "tokens": [50, 768]},
    rows_per_scenario=1024, postgres="throwaway cluster, fsync=on",
    sqlite="WAL, synchronous=FULL",
    scenarios=[_scenario("sqlite", 1, 1, 100.0), _scenario("sqlite", 64, 1, 1200.0),
               _scenario("postgres", 1, 1, 50.0), _scenario("postgres", 64, 1, 1800.0)])
ALL = {"replicas-store": STORE, "replicas": REPLICAS, "ingest_ray": RAY,
       "catalog-writes": CATALOG}


def _page(tmp_path: Path, res: dict[str, dict[str, Any]]) -> str:
    for name, d in res.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
    doc = tmp_path / "benchmarks.md"
    report.write(tmp_path, doc)
    return doc.read_text()


def _section(text: str) -> str:
    return text.split("\n## Scale-out\n", 1)[1]


def _rows(text: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first_cell} |")]


def _goals(text: str) -> list[list[str]]:
    section = text.split("## Goals", 1)[1].split("\n## ", 1)[0]
    return _rows(section, "scale-out")


def test_scale_out_section_shows_each_files_figures_and_ratios(tmp_path: Path) -> None:
    text = _page(tmp_path, ALL)
    section = _section(text)
    # the commands that wrote the files, and each file's machine line
    for d in ALL.values():
        assert f"\n{d['run']['command']}\n" in section
    assert ("`replicas-store.json`: full run, written 2026-12-01T10:00:00Z on CPU **Test CPU "
            "9000** (flags avx2, avx512f), 2 cores; load average 7.5 / 1.0 / 1.0") in section
    assert section.count("**Contended**") == 1  # only the store-level run had load above 2
    # lag p50/p99, store level and HTTP level
    assert _rows(section, "store")[0][2:7] == ["168", "335", "1,006", "168", "200"]
    assert _rows(section, "HTTP")[0][2:7] == ["212", "424", "480", "212", "60"]
    # 1 and 2 workers: req/s, the ratio within the run, p50/p99
    assert _rows(section, "1")[0][:5] == ["1", "40.0", "1.00×", "190", "400"]
    assert _rows(section, "2")[0][:5] == ["2", "70.0", "1.75×", "110", "300"]
    # single process against Ray, end to end and after start-up
    assert _rows(section, "single process")[0][4:8] == ["50.0", "62.5", "1.00×", "1.00×"]
    assert _rows(section, "ray (local cluster)")[0][4:8] == ["25.0", "40.0", "0.50×", "0.64×"]
    # rows/s per batch size, SQLite against PostgreSQL
    catalog = section.split("### Catalog writes", 1)[1]
    assert _rows(catalog, "1")[0][:6] == ["1", "1", "1024", "100", "50.0", "0.50×"]
    assert _rows(catalog, "64")[0][:6] == ["64", "1", "1024", "1,200", "1,800", "1.50×"]
    assert "not measured" not in section
    # the files are in the page's machine table and the scale-out commands in Reproduce
    assert "| replicas-store | full | 10.0 | 5.00 |" in text
    reproduce = text.split("## Reproduce", 1)[1].split("\n## ", 1)[0]
    for cmd in ("fusion-search bench replicas", "python -m bench.replicas --store-only",
                "python -m bench.ingest_ray", "python -m bench.catalog_writes"):
        assert f"\n{cmd} " in reproduce


def test_scale_out_goal_lines_are_reported_with_the_figures(tmp_path: Path) -> None:
    goals = {g[1]: g for g in _goals(_page(tmp_path, ALL))}
    assert len(goals) == 4 and all(g[3] == "reported" for g in goals.values())
    lag = goals["replica catch-up lag after an upload, p50/p99"][2]
    assert "store level p50 168 ms, p99 1,006 ms (200 commits) (load average 7.5 on 2 cores)" \
        in lag and "HTTP level p50 212 ms, p99 480 ms (60 uploads)" in lag
    assert "2/1 = 1.75×" in goals["search requests/s with 1 and 2 workers"][2]
    ray = goals["ingest images/s, single process against Ray on the same cores"][2]
    assert "single process 50, Ray 25 images/s end to end (0.50×)" in ray
    assert "after start-up 62.5 against 40 (0.64×)" in ray
    assert ("1 row/tx, 1 writer: 100 / 50.0; 64 rows/tx, 1 writer: 1,200 / 1,800"
            in goals["catalog write rate, SQLite and PostgreSQL"][2])


def test_missing_files_read_not_measured(tmp_path: Path) -> None:
    text = _page(tmp_path, {"catalog-writes": CATALOG})
    section = _section(text)
    for name, cmd in (("replicas-store", "python -m bench.replicas --store-only"),
                      ("replicas", "fusion-search bench replicas"),
                      ("ingest_ray", "python -m bench.ingest_ray")):
        assert f"not measured: `{tmp_path}/{name}.json` is missing (`{cmd}` writes it)." \
            in section
    assert not _rows(section, "store") and not _rows(section, "single process")
    assert "| 64 | 1 | 1024 | 1,200 | 1,800 | 1.50× |" in section
    verdicts = [g[3] for g in _goals(text)]
    assert verdicts == ["not measured"] * 3 + ["reported"]


def test_one_backend_missing_in_a_catalog_file_reads_not_measured(tmp_path: Path) -> None:
    only_sqlite = {**CATALOG, "scenarios": CATALOG["scenarios"][:2]}
    section = _section(_page(tmp_path, {"catalog-writes": only_sqlite}))
    assert "| 1 | 1 | 1024 | 100 | not measured | – |" in section


def test_one_command_that_wrote_both_replica_files_is_shown_once(tmp_path: Path) -> None:
    command = "fusion-search bench replicas --quick --out /tmp/x"
    res = {"replicas-store": {**STORE, "run": {**STORE["run"], "command": command}},
           "replicas": {**REPLICAS, "run": {**REPLICAS["run"], "command": command}}}
    lag = _section(_page(tmp_path, res)).split("### Search with", 1)[0]
    assert lag.count(f"\n{command}\n") == 1


def test_ray_rate_after_start_up_is_blank_when_start_up_outlasted_the_run(tmp_path: Path) -> None:
    runs = [{**RAY["runs"][0], "startup_s": 45.0, "steady_images_per_s": None,
             "summary": '{"added": 2000, "already_present": 0, "bad": 0}'}, RAY["runs"][1]]
    section = _section(_page(tmp_path, {"ingest_ray": {**RAY, "runs": runs}}))
    assert _rows(section, "single process")[0][3:8] == ["45.0", "50.0", "–", "1.00×", "–"]
    assert _rows(section, "ray (local cluster)")[0][6:8] == ["0.50×", "–"]
    assert 'single process `{"added": 2000, "already_present": 0, "bad": 0}`' in section
