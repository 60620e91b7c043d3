"""The benchmarks page's Scale-out section and its goal lines, written from the result files of
the benchmarks that run several processes over one catalog: ``replicas-store.json`` and
``replicas.json`` (``bench.replicas``), ``ingest_ray.json`` (``bench.ingest_ray``) and
``catalog-writes.json`` (``bench.catalog_writes``). A missing file reads "not measured"."""

from __future__ import annotations

from typing import Any

from .report_cells import NOT_MEASURED, bench_command, cell, table, times
from .report_goals import Goal
from .report_lookups import Results

TITLE = "Scale-out"
# the result files this section reads, each with the command that writes it by default
FILES = {
    "replicas-store": "python -m bench.replicas --store-only",
    "replicas": "fusion-search bench replicas",
    "ingest_ray": "python -m bench.ingest_ray",
    "catalog-writes": "python -m bench.catalog_writes",
}
# the lines of the Reproduce block that run them
REPRODUCE = (
    "fusion-search bench replicas     # catch-up lag (store and HTTP level), search with 1 and "
    "2 workers: replicas-store.json, replicas.json",
    "python -m bench.replicas --store-only  # only the store-level lag (seconds, no model)",
    "python -m bench.ingest_ray       # ingest, single process against a local Ray cluster: "
    "ingest_ray.json",
    "python -m bench.catalog_writes   # catalog writes, SQLite against a throwaway PostgreSQL: "
    "catalog-writes.json",
)
BACKENDS = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


def written(name: str, d: dict[str, Any]) -> str:
    """Which run wrote ``<name>.json``, on which CPU, and how busy the machine was then."""
    m = d["machine"]
    flags = m.get("cpu_flags")
    flag_text = ("flags not recorded" if flags is None
                 else f"flags {', '.join(flags) if flags else 'none'}")
    load = m.get("loadavg_1_5_15") or []
    cores = m.get("cores") or 1
    busy = ""
    if load and load[0] > cores:
        busy = (f" **Contended**: a 1-minute load above the {cores} cores, more runnable "
                "processes than cores (other work, or the benchmark's own servers, workers and "
                "clients); read the figures as directions, compare only within the file.")
    return (f"`{name}.json`: {'quick' if d['quick'] else 'full'} run, written "
            f"{m['date_utc']} on CPU **{m['cpu']}** ({flag_text}), {m['cores']} cores; load "
            f"average {' / '.join(str(x) for x in load) or 'not recorded'} (1/5/15 min) when "
            f"written.{busy}")


def _head(res: Results, names: tuple[str, ...], rel: str) -> list[str]:
    """The commands that wrote ``names`` and their machine lines; "not measured" for a file
    that is missing."""
    # `fusion-search bench replicas` writes two files: its command once
    cmds = list(dict.fromkeys(bench_command(res[n]) for n in names if n in res))
    out = ["```sh", *cmds, "```", ""] if cmds else []
    for n in names:
        out.append(written(n, res[n]) if n in res else
                   f"{NOT_MEASURED}: `{rel}/{n}.json` is missing (`{FILES[n]}` writes it).")
        out.append("")
    return out


def _lag_row(level: str, how: str, stats: dict[str, Any] | None) -> list[object]:
    if stats is None:
        return [level, how, NOT_MEASURED, "–", "–", "–", "–"]
    return [level, how, stats["p50_ms"], stats["p90_ms"], stats["p99_ms"], stats["mean_ms"],
            stats["n"]]


def lag(res: Results, rel: str) -> str:
    store, http = res.get("replicas-store"), res.get("replicas")
    out = ["### Replica catch-up lag", "", *_head(res, ("replicas-store", "replicas"), rel)]
    if store is None and http is None:
        return "\n".join(out).rstrip()
    out += ["Milliseconds from an acknowledged write in one process to another process's FAISS "
            "view holding it (its follower applied the change log).", ""]
    rows = [
        _lag_row("store", "a commit through `Store.add_many` at a random moment; a second "
                 "process's follower" + (f" (polling every {store['follow_interval_s']:g} s)"
                                         if store else ""), store and store["lag"]),
        _lag_row("HTTP", "an upload answered by one `uvicorn` server; the other's "
                 "`/api/v1/info` vector count" + (f" (read every {http['lag']['poll_ms']:g} ms)"
                                                  if http else ""),
                 http and http["lag"]["lag"]),
    ]
    out.append(table(rows, ["level", "write, and what sees it", "p50 ms", "p90 ms", "p99 ms",
                            "mean ms", "writes"]))
    return "\n".join(out)


def workers(res: Results, rel: str) -> str:
    d = res.get("replicas")
    out = ["### Search with 1 and 2 workers", ""]
    if d is None:
        return "\n".join([*out, f"{NOT_MEASURED}: `{rel}/replicas.json` is missing "
                                f"(`{FILES['replicas']}` writes it)."])
    rows = {r["workers"]: r for r in d["search"]}
    base = rows.get(1)
    out += [f"`fusion-search serve --workers N` over {d['items']:,} bulk-loaded items, text "
            f"search without re-rank from {d['concurrency']} closed-loop httpx clients, "
            f"{d['duration_s']:g} s per worker count, one torch thread per worker; same run "
            "(machine line above).", "",
            table([[n, r["rps"], times(r["rps"] / base["rps"]) if base and base["rps"] else "–",
                    r["p50_ms"], r["p99_ms"], r["errors"], r.get("requests")]
                   for n, r in sorted(rows.items())],
                  ["workers", "req/s", "x 1 worker", "p50 ms", "p99 ms", "errors",
                   "requests"])]
    return "\n".join(out)


def _ray_rows(d: dict[str, Any]) -> list[list[object]]:
    single = d["runs"][0]
    out: list[list[object]] = []
    for r in d["runs"]:
        steady, base = r.get("steady_images_per_s"), single.get("steady_images_per_s")
        out.append([r["mode"], r["images"], r["wall_s"], r["startup_s"], r["images_per_s"],
                    steady, times(r["images_per_s"] / single["images_per_s"]),
                    times(steady / base) if steady and base else "–", r.get("rerun_s")])
    return out


def ray(res: Results, rel: str) -> str:
    d = res.get("ingest_ray")
    out = ["### Ingest: single process against Ray", "", *_head(res, ("ingest_ray",), rel)]
    if d is None:
        return "\n".join(out).rstrip()
    out += [f"`fusion-search ingest` and `fusion-search ingest --ray auto` (a local Ray cluster "
            f"it starts) on the same {d['images']:,} generated {d['size']}×{d['size']} JPEGs, "
            f"each a subprocess timed from start to exit, on {d['cores']} cores; start-up timed "
            "apart on an empty folder; the re-run ingests the same folder again into the same "
            "data dir (nothing to add).", "",
            table(_ray_rows(d), ["mode", "images", "wall s", "start-up s", "img/s end to end",
                                 "img/s after start-up", "x single end to end",
                                 "x single after start-up", "re-run s"]), ""]
    if any(r.get("steady_images_per_s") is None for r in d["runs"]):
        out += ["– after start-up: the start-up measured apart took as long as the whole run "
                "(a disturbed machine); only the end-to-end rate stands.", ""]
    out.append("Summary lines: " + "; ".join(
        f"{r['mode']} `{r.get('summary')}`, re-run `{r.get('rerun_summary')}`"
        for r in d["runs"]) + ".")
    return "\n".join(out)


def _pivot(d: dict[str, Any]) -> list[list[object]]:
    by = {(r["backend"], r["batch"], r["writers"]): r for r in d["scenarios"]}
    rows: list[list[object]] = []
    for batch, writers in sorted({(r["batch"], r["writers"]) for r in d["scenarios"]}):
        lite, pg = by.get(("sqlite", batch, writers)), by.get(("postgres", batch, writers))
        rows.append([batch, writers, (lite or pg or {}).get("rows"),
                     lite["rows_per_s"] if lite else NOT_MEASURED,
                     pg["rows_per_s"] if pg else NOT_MEASURED,
                     times(pg["rows_per_s"] / lite["rows_per_s"])
                     if lite and pg and lite["rows_per_s"] else "–",
                     *(f"{cell(r['tx_p50_ms'])} / {cell(r['tx_p99_ms'])}" if r else "–"
                       for r in (lite, pg))])
    return rows


def catalog(res: Results, rel: str) -> str:
    d = res.get("catalog-writes")
    out = ["### Catalog writes: SQLite against PostgreSQL", "",
           *_head(res, ("catalog-writes",), rel)]
    if d is None:
        return "\n".join(out).rstrip()
    row = d["row"]
    out += [f"Rows of a ViT-B-32-sized item ({row['dim']}-d float32 embedding, "
            f"{'×'.join(str(x) for x in row['tokens'])} float16 patch tokens) through the "
            f"catalog's `add_many`, one transaction per batch; each writer thread holds its own "
            f"catalog. SQLite: {d['sqlite']}; "
            f"PostgreSQL: {d['postgres']}; both durable on commit, same disk.", "",
            table(_pivot(d), ["rows per transaction", "writers", "rows", "SQLite rows/s",
                              "PostgreSQL rows/s", "PostgreSQL/SQLite",
                              "SQLite tx p50 / p99 ms", "PostgreSQL tx p50 / p99 ms"])]
    return "\n".join(out)


def scaling(res: Results, rel: str) -> str:
    """The whole section (without its ``##`` title) from the results loaded from ``rel``."""
    intro = ("Several processes over one catalog (`docs/scaling.md`): how soon another "
             "process sees a write, what a second worker adds, Ray against one process, and "
             "the two catalog backends' write rates. Every ratio is between rows of one file.")
    return "\n\n".join([intro, lag(res, rel), workers(res, rel), ray(res, rel),
                        catalog(res, rel)])


def _fig(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _contended(d: dict[str, Any]) -> str:
    m = d["machine"]
    load = (m.get("loadavg_1_5_15") or [0.0])[0]
    return f" (load average {load} on {m['cores']} cores)" if load > (m.get("cores") or 1) else ""


def _reported(*ds: dict[str, Any] | None) -> str:
    present = [d for d in ds if d is not None]
    if not present:
        return NOT_MEASURED
    return "reported" + (" (quick run)" if any(d["quick"] for d in present) else "")


def _lag_goal(res: Results) -> str:
    parts = []
    for level, d, stats, unit in (
            ("store", res.get("replicas-store"), lambda d: d["lag"], "commits"),
            ("HTTP", res.get("replicas"), lambda d: d["lag"]["lag"], "uploads")):
        if d is None:
            parts.append(f"{level} level {NOT_MEASURED}")
        else:
            s = stats(d)
            parts.append(f"{level} level p50 {_fig(s['p50_ms'])} ms, p99 {_fig(s['p99_ms'])} ms "
                         f"({s['n']} {unit}){_contended(d)}")
    return "; ".join(parts)


def _workers_goal(d: dict[str, Any]) -> str:
    rows = {r["workers"]: r for r in d["search"]}
    text = ", ".join(f"{n} worker{'s' * (n > 1)} {_fig(r['rps'])} req/s (p50 "
                     f"{_fig(r['p50_ms'])} ms, p99 {_fig(r['p99_ms'])} ms)"
                     for n, r in sorted(rows.items()))
    if 1 in rows and 2 in rows and rows[1]["rps"]:
        text += f"; 2/1 = {times(rows[2]['rps'] / rows[1]['rps'])}"
    return text + f" at {d['concurrency']} clients, {d['items']:,} items{_contended(d)}"


def _ray_goal(d: dict[str, Any]) -> str:
    single, ray_run = d["runs"][0], d["runs"][-1]
    text = (f"single process {_fig(single['images_per_s'])}, Ray "
            f"{_fig(ray_run['images_per_s'])} images/s end to end "
            f"({times(ray_run['images_per_s'] / single['images_per_s'])})")
    s, r = single.get("steady_images_per_s"), ray_run.get("steady_images_per_s")
    if s and r:
        text += f"; after start-up {_fig(s)} against {_fig(r)} ({times(r / s)})"
    return text + f"; {d['images']:,} JPEGs on {d['cores']} cores{_contended(d)}"


def _catalog_goal(d: dict[str, Any]) -> str:
    by = {(r["backend"], r["batch"], r["writers"]): r["rows_per_s"] for r in d["scenarios"]}
    pairs = sorted({(r["batch"], r["writers"]) for r in d["scenarios"]})
    return "rows/s SQLite / PostgreSQL: " + "; ".join(
        f"{b} row{'s' * (b > 1)}/tx, {w} writer{'s' * (w > 1)}: "
        f"{cell(by.get(('sqlite', b, w), NOT_MEASURED))} / "
        f"{cell(by.get(('postgres', b, w), NOT_MEASURED))}" for b, w in pairs) + _contended(d)


def scaling_goals(res: Results) -> list[Goal]:
    """The issue's scale-out figures as goal lines: no target, "reported" or "not measured"."""
    area = "scale-out"
    rep, ray_d, cat = res.get("replicas"), res.get("ingest_ray"), res.get("catalog-writes")
    store = res.get("replicas-store")
    return [
        Goal(area, "replica catch-up lag after an upload, p50/p99", _lag_goal(res)
             if store or rep else NOT_MEASURED, _reported(store, rep)),
        Goal(area, "search requests/s with 1 and 2 workers",
             _workers_goal(rep) if rep else NOT_MEASURED, _reported(rep)),
        Goal(area, "ingest images/s, single process against Ray on the same cores",
             _ray_goal(ray_d) if ray_d else NOT_MEASURED, _reported(ray_d)),
        Goal(area, "catalog write rate, SQLite and PostgreSQL",
             _catalog_goal(cat) if cat else NOT_MEASURED, _reported(cat)),
    ]
