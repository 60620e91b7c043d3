"""Markdown tables from the result JSON files: ``python -m bench.report [DIR]``.

docs/benchmarks.md quotes these tables; regenerate them after a new recorded run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import RESULTS_DIR


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(v: object) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.3f}"
    return "–" if v is None else str(v)


def machine(d: dict[str, Any]) -> str:
    m = d["machine"]
    return (f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, torch {m['torch']}, "
            f"FAISS {m['faiss']}, open_clip {m['open_clip']}, Python {m['python']} "
            f"({m['date_utc']})")


def encode(d: dict[str, Any]) -> str:
    out = [f"Matmul 2048³: fp32 {d['matmul_gflops']['fp32']:.0f} GFLOP/s, bf16 "
           f"{d['matmul_gflops']['bf16']:.0f} GFLOP/s.", ""]
    out.append(table([[r["model"], r["precision"], r["batch"], r["plain_images_per_s"],
                       r["ours_images_per_s"], f"{r['image_speedup']:.2f}×",
                       f"{r['image_cosine_min']:.5f}", r["plain_texts_per_s"],
                       r["ours_texts_per_s"], f"{r['text_speedup']:.2f}×",
                       f"{r['text_cosine_min']:.5f}"] for r in d["models"]],
                     ["model", "ours", "batch", "plain img/s", "ours img/s", "speed-up",
                      "min cos", "plain txt/s", "ours txt/s", "speed-up", "min cos"]))
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
                f"tokens), {q['model']}:", ""]
        out.append(table([[k, v["p50_ms"], v["p99_ms"], v["mean_ms"],
                           f"{v['speedup_p50']:.1f}×", f"{v['cosine']:.5f}"]
                          for k, v in q["variants"].items()],
                         ["variant", "p50 ms", "p99 ms", "mean ms", "speed-up (p50)", "cos"]))
    if "variants" in d:
        out += ["", "ViT-B-32 vision forward (pixels prepared), settings tried:", ""]
        out.append(table([[r["variant"], r["images_per_s"], f"{r['vs_plain']:.2f}×",
                           r.get("compile_s")] for r in d["variants"]],
                         ["setting", "images/s", "vs plain fp32", "compile s"]))
    return "\n".join(out)


def index(d: dict[str, Any]) -> str:
    out = []
    for s in d["sizes"]:
        out += [f"**{s['n']:,} × {s['dim']}** ({s['queries']} queries; single-query latency "
                f"over {s['single_queries']}; IVF trained on {s['train_points']:,}):", ""]
        rows = [[c["name"] + (f" (n={c['n']:,})" if c["n"] != s["n"] else ""), r["param"],
                 c["build_s"], c["bytes_per_vector"], r["recall"], r["p50_ms"], r["p99_ms"],
                 r["qps"]] for c in s["configs"] for r in c["sweep"]]
        out.append(table(rows, ["index", "efSearch / nprobe", "build s", "bytes/vector",
                                "recall@10", "p50 ms", "p99 ms", "batch QPS"]))
        out += ["", table([[f, o["params"], o["raw_p50_ms"], o["ours_p50_ms"],
                            f"{o['p50_overhead']:+.0%}", o["raw_qps"], o["ours_qps"],
                            f"{o['qps_overhead']:+.0%}"] for f, o in s["overhead"].items()],
                          ["factory", "default params", "raw p50 ms", "VectorIndex p50 ms",
                           "overhead", "raw QPS", "VectorIndex QPS", "overhead"]), ""]
        if s.get("contention"):
            out += [table([[r["factory"], r["machine"], r["searcher"], r["p50_ms"],
                            r["p99_ms"]] for r in s["contention"]],
                          ["index", "machine", "searcher", "p50 ms", "p99 ms"]), ""]
        ch = s["choice"]
        chosen = ch["chosen"]
        best = ch["best_meeting_goal"]
        out.append(f"index.choice picks `{ch['factory']}` {ch['params']}: "
                   + (f"recall {chosen['recall']}, p50 {chosen['p50_ms']} ms"
                      if chosen else "not measured")
                   + f"; goal met: {ch['chosen_meets_goal']}; fastest measured setting meeting "
                   + (f"it: {best['name']} {best['param']} (recall {best['recall']}, p50 "
                      f"{best['p50_ms']} ms)" if best else "it: none"))
        out.append("")
    return "\n".join(out)


def http(d: dict[str, Any]) -> str:
    rows = [[r["scenario"], r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"], r["errors"],
             r.get("server_cpu_cores")] for r in d["rows"]]
    mem = d["memory"]
    out = [table(rows, ["scenario", "clients", "req/s", "p50 ms", "p99 ms", "errors",
                        "server CPU (cores)"]), "",
           f"Server RSS: idle {mem['idle']['rss'] / 2**20:.0f} MiB; peak "
           f"{max(m['peak'] for m in mem.values()) / 2**20:.0f} MiB; data dir "
           f"{d['data_dir_bytes'] / 2**20:.0f} MiB on disk, of which patch tokens "
           f"{d['token_bytes'] / 2**20:.0f} MiB."]
    return "\n".join(out)


def ingest(d: dict[str, Any]) -> str:
    st = d["stages"]
    return "\n".join([
        table([[d["images"], d["wall_s"], d["startup_s"], d["end_to_end_images_per_s"],
                d["steady_images_per_s"], d["pure_encode_images_per_s"],
                f"{d['ratio_end_to_end']:.2f}", f"{d['ratio_steady']:.2f}"]],
              ["images", "wall s", "start-up s", "ingest img/s", "ingest img/s after start-up",
               "encode-only img/s", "ratio", "ratio after start-up"]),
        "",
        table([[k, v / st["images"] * 1000] for k, v in st["seconds"].items()],
              ["stage", "ms per image"]),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    folder = Path(args[0]) if args else RESULTS_DIR
    for name, render in (("encode", encode), ("index", index), ("http", http),
                         ("ingest", ingest)):
        path = folder / f"{name}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            print(f"### {name}\n\n{machine(data)}\n\n{render(data)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
