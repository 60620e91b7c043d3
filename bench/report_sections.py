"""One section of the benchmarks page per benchmark (encode, index, http, ingest, memory): the
tables and sentences written from its result JSON."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .http_load import workers_scenario
from .report_cells import NOT_MEASURED, cell, mib, pct, point, setting, table, times
from .report_lookups import (
    at_recall,
    client_comparison,
    client_of,
    hnsw_pair,
    micro_batching,
    scenario_row,
)
from .report_runtimes import runtimes


def _gflops(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"


def encode(d: dict[str, Any]) -> str:
    rates, sizes = d["matmul_gflops"], d.get("matmul_n", {})
    out = ["Matmul in the same process: " + ", ".join(
        f"{k} {_gflops(rates[k])} GFLOP/s ({sizes.get(k, 2048)}³)" for k in ("fp32", "bf16"))
        + ".", ""]
    out.append(table([[r["model"], r["precision"], r["batch"], r["images"],
                       r["plain_images_per_s"], r["ours_images_per_s"], times(r["image_speedup"]),
                       f"{r['image_cosine_min']:.5f}", r["texts"], r["plain_texts_per_s"],
                       r["ours_texts_per_s"], times(r["text_speedup"]),
                       f"{r['text_cosine_min']:.5f}"] for r in d["models"]],
                     ["model", "ours", "batch", "images", "plain img/s", "ours img/s",
                      "ours/plain", "min cos", "texts", "plain txt/s", "ours txt/s",
                      "ours/plain", "min cos"]))
    out.append("")
    out.append(table([[r["model"], r["image_gflop"], f"{r['plain_image_matmul_fraction']:.0%}",
                       f"{r['ours_image_matmul_fraction']:.0%}", r["text_gflop_plain"],
                       r["text_gflop_ours"], f"{r['plain_text_matmul_fraction']:.0%}",
                       f"{r['ours_text_matmul_fraction']:.0%}"] for r in d["models"]],
                     ["model", "GFLOP/image", "plain: of fp32 matmul", "ours: of matmul",
                      "GFLOP/text plain (padded)", "GFLOP/text ours (trimmed)",
                      "plain: of fp32 matmul", "ours: of matmul"]))
    if "query" in d:
        q = d["query"]
        out += ["", f"One query {q['query']!r} ({q['query_tokens']} of {q['context_length']} "
                f"tokens), {q['model']}, {q['variants']['plain_fp32_padded']['n']} calls each, "
                "alternated:", ""]
        out.append(table([[k, v["p50_ms"], v["p99_ms"], v["mean_ms"], times(v["speedup_p50"]),
                           f"{v['cosine']:.5f}"] for k, v in q["variants"].items()],
                         ["variant", "p50 ms", "p99 ms", "mean ms", "plain/this (p50)",
                          "cos"]))
    if "variants" in d:
        out += ["", "ViT-B-32 vision forward (pixels prepared), settings tried:", ""]
        out.append(table([[r["variant"], r["images_per_s"], times(r["vs_plain"]),
                           r.get("compile_s"), r.get("error")] for r in d["variants"]],
                         ["setting", "images/s", "this/plain fp32", "compile s", "error"]))
    return "\n".join(out)


def _bound(sweep: Sequence[dict[str, Any]], target: float, p50: float | None) -> str:
    """A p50 at ``target`` recall as a cell: "≤" when the sweep starts above that recall."""
    if p50 is None:
        return "–"
    low = min(r["recall"] for r in sweep) > target
    return ("≤ " if low else "") + cell(p50)


def index(d: dict[str, Any]) -> str:
    out = [f"Vectors: a Gaussian mixture shaped like embeddings ({cell(d['data_model'])}); "
           f"k = {d['k']}; FAISS on {d['threads']} threads; HNSW {cell(d['hnsw'])}.", ""]
    for s in d["sizes"]:
        out += [f"**{s['n']:,} × {s['dim']}** ({s['queries']} queries; single-query latency "
                f"over {s['single_queries']}; IVF trained on {s['train_points']:,}; exact search "
                f"{s['flat_batch_qps']:,.0f} QPS in a batch):", ""]
        rows = [[c["name"] + (f" (n={c['n']:,})" if c["n"] != s["n"] else ""), r["param"],
                 c["build_s"], c["bytes_per_vector"], r["recall"], r["p50_ms"], r["p99_ms"],
                 r["qps"]] for c in s["configs"] for r in c["sweep"]]
        out.append(table(rows, ["index", "efSearch / nprobe", "build s", "bytes/vector",
                                "recall@10", "p50 ms", "p99 ms", "batch QPS"]))
        out += ["", "VectorIndex against the FAISS index it wraps (default search parameters, "
                "single queries alternated one by one):", "",
                table([[f, o["params"], o["raw_p50_ms"], o["ours_p50_ms"],
                        pct(o["p50_overhead"]), o["raw_qps"], o["ours_qps"],
                        pct(o["qps_overhead"])] for f, o in s["overhead"].items()],
                      ["factory", "default params", "raw p50 ms", "VectorIndex p50 ms",
                       "p50 ours/raw − 1", "raw QPS", "VectorIndex QPS", "QPS raw/ours − 1"]),
                ""]
        pair = hnsw_pair(s, d["goal"]["recall"])
        if pair is not None:
            fh, lib, common, _, _ = pair
            cells = []
            for target in sorted({0.8, 0.9, 0.95, 0.99, round(common, 4)}):
                t_f, t_l = at_recall(fh["sweep"], target), at_recall(lib["sweep"], target)
                if t_f is not None or t_l is not None:
                    f_cell, l_cell = (_bound(fh["sweep"], target, t_f),
                                      _bound(lib["sweep"], target, t_l))
                    exact = t_f and t_l and "≤" not in f_cell + l_cell
                    cells.append([f"{target:.4g}", f_cell, l_cell,
                                  (t_f / t_l) if exact and t_f and t_l else None])
            out += [f"FAISS HNSW against hnswlib, same M and efConstruction, n = {fh['n']:,}: "
                    f"build {fh['build_s']:.1f} s against {lib['build_s']:.1f} s; p50 at equal "
                    "recall, interpolated along each efSearch sweep (– where a sweep never "
                    "reaches that recall; ≤ where its smallest efSearch already passes it):", "",
                    table(cells, ["recall@10", "FAISS p50 ms", "hnswlib p50 ms",
                                  "FAISS/hnswlib"]), ""]
        if s.get("contention"):
            out += ["Single queries on an idle machine and with every core kept busy by other "
                    "processes:", "",
                    table([[r["factory"], r["machine"], r["searcher"], r["p50_ms"],
                            r["p99_ms"]] for r in s["contention"]],
                          ["index", "machine", "searcher", "p50 ms", "p99 ms"]), ""]
        ch = s["choice"]
        chosen, best = ch["chosen"], ch["best_meeting_goal"]
        out.append(f"index.choice picks {setting(ch['factory'], ch['params'])}: "
                   + (f"recall {chosen['recall']}, p50 {chosen['p50_ms']} ms"
                      if chosen else NOT_MEASURED)
                   + f"; meets p50 ≤{d['goal']['p50_ms']} ms with recall ≥{d['goal']['recall']}: "
                   + ("yes" if ch["chosen_meets_goal"] else "no")
                   + "; fastest measured setting meeting both: "
                   + (f"{point(best)} (recall {best['recall']}, p50 {best['p50_ms']} ms)"
                      if best else "none") + ".")
        out.append("")
    return "\n".join(out)


def http(d: dict[str, Any]) -> str:
    rows = [[r["scenario"], client_of(r), r.get("model", d["model"]), r.get("items", d["items"]),
             r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"], r["errors"],
             r.get("server_cpu_cores"),
             r["server_cpu_cores"] / r["rps"] * 1000 if r["rps"] else None,
             r.get("client_cpu_cores")] for r in d["rows"]]
    mem = d["memory"]
    out = [f"{d['duration_s']:g} s per level after {d['warmup_s']:g} s of warm-up; closed "
           f"loop; {d['client']}. Server: {cell(d['server'])}. Collection bulk-loaded in "
           f"{d['bulk_load']['load_s']:.0f} s.", "",
           table(rows, ["scenario", "client", "model", "items", "clients", "req/s", "p50 ms",
                        "p99 ms", "errors", "server CPU (cores)", "server CPU ms/request",
                        "client CPU (cores)"]), ""]
    pairs = client_comparison(d)
    if pairs:
        out += ["What the load generator costs, same server, same run: text search driven by "
                "wrk against the async httpx client in the benchmark's Python process (both "
                "share the machine's cores with the server):", "",
                table([[c, w["rps"], h["rps"], w["p50_ms"], h["p50_ms"], w["p99_ms"],
                        h["p99_ms"], w.get("client_cpu_cores"), h.get("client_cpu_cores"),
                        w["client_cpu_cores"] / w["rps"] * 1000 if w["rps"] else None,
                        h["client_cpu_cores"] / h["rps"] * 1000 if h["rps"] else None]
                       for c, w, h in pairs],
                      ["clients", "req/s wrk", "req/s httpx", "p50 ms wrk", "p50 ms httpx",
                       "p99 ms wrk", "p99 ms httpx", "client CPU wrk (cores)",
                       "client CPU httpx (cores)", "client CPU ms/request wrk",
                       "client CPU ms/request httpx"]), ""]
    pairs = micro_batching(d)
    if pairs:
        out += ["Text-query micro-batching, same collection, same run (on against off):", "",
                table([[c, on["rps"], off["rps"], times(on["rps"] / off["rps"]), on["p50_ms"],
                        off["p50_ms"], times(on["p50_ms"] / off["p50_ms"]), on["p99_ms"],
                        off["p99_ms"]] for c, on, off in pairs],
                      ["clients", "req/s on", "req/s off", "on/off", "p50 ms on", "p50 ms off",
                       "on/off", "p99 ms on", "p99 ms off"]), ""]
    out += _workers(d)
    cold = d["cold_start"]
    out.append(f"Cold start: the first {cold['requests']} queries of a fresh server, p50 "
               f"{cold['p50_ms']:.1f} ms, max {cold['max_ms']:.0f} ms.")
    out.append("")
    out.append(f"Server RSS: idle {mib(mem['idle']['rss'])}; peak "
               f"{mib(max(m['peak'] for m in mem.values()))}; data dir "
               f"{mib(d['data_dir_bytes'])} on disk, of which patch tokens "
               f"{mib(d['token_bytes'])}.")
    big = d.get("big_model")
    if big:
        out.append(f"The {big['model']} server over its {big['items']:,} items: idle RSS "
                   f"{mib(big['memory_idle']['rss'])}.")
    return "\n".join(out)


def _workers(d: dict[str, Any]) -> list[str]:
    """One worker per core against one process at 4 clients, both under auto, same run."""
    n = (d.get("workers") or {}).get("count") or 0
    lines = []
    for plain in ("search", "search+rerank50"):
        one = scenario_row(d, f"{plain} [FUSION_RUNTIME=auto]", 4)
        many = scenario_row(d, workers_scenario(plain, n), 4) if n > 1 else None
        if one and many and one["rps"]:
            lines.append(f"{plain} {times(many['rps'] / one['rps'])} the requests/s, p50 "
                         f"{one['p50_ms']:.1f} to {many['p50_ms']:.1f} ms")
    if not lines:
        return []
    return [f"One worker per core (`fusion-search serve --workers {n}`, one torch thread each) "
            "against one process, both under `FUSION_RUNTIME=auto`, 4 clients, same run: "
            + "; ".join(lines) + ". Each worker holds its own model and index in memory.", ""]


def ingest(d: dict[str, Any]) -> str:
    st = d["stages"]
    return "\n".join([
        f"`fusion-search ingest` (batch {d['batch']}, {d['precision']}) in a subprocess, timed "
        f"from start to exit; the encode-only rate is `encode_images_with_tokens` on "
        f"{d.get('pure_encode_images', d['images']):,} of the same images, decoded beforehand. "
        f"JPEGs average {d['jpeg_mean_bytes'] / 1024:.1f} KiB. Summary line: "
        f"`{d['command_summary']}`.", "",
        table([[d["images"], d["wall_s"], d["startup_s"], d["end_to_end_images_per_s"],
                d["steady_images_per_s"], d["pure_encode_images_per_s"],
                f"{d['ratio_end_to_end']:.2f}", f"{d['ratio_steady']:.2f}"]],
              ["images", "wall s", "start-up s", "ingest img/s", "ingest img/s after start-up",
               "encode-only img/s", "ingest/encode", "after start-up/encode"]),
        "",
        f"Where the time goes, stage by stage on {st['images']:,} images, one after another:",
        "",
        table([[k, v / st["images"] * 1000, st["images_per_s"][k]]
               for k, v in st["seconds"].items()], ["stage", "ms per image", "images/s"]),
    ])


def memory(d: dict[str, Any]) -> str:
    parts = [
        f"A uvicorn server ({d['model']}, re-rank depth {d['rerank_depth']}) over a collection "
        "bulk-loaded with patch tokens; RSS read from /proc (VmRSS, VmHWM) when ready and after "
        "re-ranked text searches (every fourth with a tag filter). Re-ranking reads each "
        "query's candidates' tokens from the SQLite catalog. "
        f"The second row, {d['wide_model']}, holds the same number of ViT-B-32-sized vectors "
        "(512-d) and is re-ranked the same way: the bundled architecture with 512-d "
        "embeddings and an attention head, random weights, served from an open_clip "
        "`local-dir:` folder (ViT-B-32 itself has no fusion head, and its patch tokens would "
        "take 77 GB at 1,000,000 items).", "",
        table([[f"{r['items']:,}", r.get("model", d["model"]), f"`{r['index']}`",
                mib(r["rss_idle"]), mib(r["rss_after_search"]), mib(r["rss_peak"]),
                f"{r['token_bytes'] / 2**30:.2f}", f"{r['data_dir_bytes'] / 2**30:.2f}",
                r["start_s"]] for r in d["rows"]],
              ["items", "model", "index", "RSS idle", "RSS after searches", "RSS peak",
               "patch tokens on disk GiB", "data dir GiB", "server start s"]),
    ]
    lat = [[f"{r['items']:,}", r.get("model", d["model"]),
            f"depth {d['rerank_depth']}" if r.get("rerank") else "off", x["concurrency"],
            x["client"], x["rps"], x["p50_ms"], x["p99_ms"], x["errors"]]
           for r in d["rows"] for x in r.get("latency", [])]
    if lat:
        parts += ["", f"Text search over HTTP against the same servers, closed loop, "
                      f"{d['duration_s']:.0f} s per level after a warm-up:", "",
                  table(lat, ["items", "model", "re-rank", "clients", "driver", "req/s",
                              "p50 ms", "p99 ms", "errors"])]
    return "\n".join(parts)


SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], str], str]] = {
    "encode": ("Encoding", encode, "encode speed, ours against plain open_clip"),
    "index": ("Vector search", index, "recall against single-query latency"),
    "http": ("HTTP", http, "throughput and latency against concurrent clients"),
    "ingest": ("Bulk ingest", ingest, "ingest against encode-only rate"),
    "memory": ("Server memory", memory, "server RSS against bytes on disk"),
    "runtimes": ("Runtimes", runtimes, "images/s and one query per runtime and precision"),
}

