"""docs/benchmarks.md from the result JSON files: ``fusion-search bench report`` (or
``python -m bench.report [DIR] [--doc FILE]``).

Every figure in the page is read from ``<DIR>/{encode,index,http,ingest}.json``; what those files
do not hold is written as "not measured", never estimated. Each goal of the benchmark issue gets
one line: "goal met", or how far the measured figure is from it.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import QUICK_DIR, RESULTS_DIR

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
NAMES = ("encode", "index", "http", "ingest", "memory")
NOT_MEASURED = "not measured"
MET = "goal met"
# the sizes the issue names
INDEX_GOAL_N = 1_000_000
HTTP_GOAL_ITEMS = 100_000
INGEST_GOAL_IMAGES = 10_000
MEMORY_SIZES = (100_000, 1_000_000)

Results = dict[str, dict[str, Any]]


def default_doc(out: Path) -> Path:
    """docs/benchmarks.md for the recorded results; a page beside any other results."""
    return DOC if out.resolve() == RESULTS_DIR.resolve() else out / "benchmarks.md"


def load(folder: Path) -> Results:
    return {name: json.loads((folder / f"{name}.json").read_text())
            for name in NAMES if (folder / f"{name}.json").is_file()}


def write(folder: Path, doc: Path) -> Path:
    """Render the results in ``folder`` into ``doc``; returns its path."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(render(load(folder), folder, doc))
    print(f"wrote {doc}")
    return doc


# ---- formatting ---------------------------------------------------------------------------------

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
    if isinstance(v, dict):
        return ", ".join(f"{k} {val}" for k, val in v.items() if val is not None) or "–"
    return "–" if v is None else str(v).replace("|", "\\|")


def _x(v: float) -> str:
    return f"{v:.2f}×"


def _pct(v: float) -> str:
    return f"{v:+.0%}"


def _mib(v: float) -> str:
    return f"{v / 2**20:,.0f} MiB"


def _cmd(d: dict[str, Any]) -> str:
    return d.get("run", {}).get("command") or f"fusion-search bench {d['benchmark']}"


def _shown(path: Path) -> str:
    """A path as a reader of the page types it: from the repository root when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _setting(factory: str, params: dict[str, Any]) -> str:
    return f"`{factory}`" + (f" ({_cell(params)})" if params else "")


def _point(p: dict[str, Any]) -> str:
    """A measured setting: its name and, when it has one, its efSearch / nprobe."""
    return p["name"] + (f" at {p['param']}" if p.get("param") is not None else "")


def _figure(name: str, folder: Path, doc: Path, alt: str) -> str:
    png = folder / f"{name}.png"
    if not png.is_file():
        return f"*(plot {png.name}: {NOT_MEASURED})*"
    return f"![{alt}]({os.path.relpath(png, doc.parent)})"


# ---- goals --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Goal:
    area: str
    goal: str
    measured: str
    verdict: str


def _short(value: float, goal: float, unit: str, higher_is_better: bool) -> str:
    """How far ``value`` is from ``goal``, in the goal's terms."""
    shown = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if higher_is_better:
        return f"{shown}{unit} against ≥{goal:g}{unit} ({value / goal:.0%} of the goal)"
    over = value / goal
    return f"{shown}{unit} against ≤{goal:g}{unit} (" + (
        f"{over - 1:.0%} over the limit)" if over < 2 else f"{over:.1f}× the limit)")


def _verdict(misses: Sequence[str], quick: bool) -> str:
    text = MET if not misses else "not met: " + "; ".join(misses)
    return text + (" (quick run)" if quick else "")


def encode_goals(d: dict[str, Any] | None) -> list[Goal]:
    area = "encode"
    g_img = "ViT-B-32 images ≥3× the plain fp32 open_clip loop, every embedding cosine ≥0.999"
    g_frac = "report the fraction of the same run's matmul rate reached"
    g_q = "one short text query on ViT-B-32 ≥5× faster than the plain call, cosine ≥0.999"
    row = next((r for r in (d or {}).get("models", []) if r["model"] == "ViT-B-32"), None)
    if d is None or row is None:
        out = [Goal(area, g_img, NOT_MEASURED, NOT_MEASURED),
               Goal(area, g_frac, NOT_MEASURED, NOT_MEASURED)]
    else:
        goal_x, goal_cos = d["goals"]["image_speedup"], d["goals"]["cosine"]
        misses = []
        if row["image_speedup"] < goal_x:
            misses.append(_short(row["image_speedup"], goal_x, "×", True))
        if row["image_cosine_min"] < goal_cos:
            misses.append(f"min cosine {row['image_cosine_min']:.5f} < {goal_cos}")
        out = [Goal(area, g_img,
                    f"{_x(row['image_speedup'])} ({row['ours_images_per_s']:.1f} against "
                    f"{row['plain_images_per_s']:.1f} images/s, {row['precision']}), min cosine "
                    f"{row['image_cosine_min']:.5f}", _verdict(misses, d["quick"])),
               Goal(area, g_frac,
                    f"ours {row['ours_image_matmul_fraction']:.0%} of the {row['precision']} "
                    f"matmul rate ({d['matmul_gflops'][row['precision']]:.0f} GFLOP/s); plain "
                    f"{row['plain_image_matmul_fraction']:.0%} of fp32 "
                    f"({d['matmul_gflops']['fp32']:.0f} GFLOP/s)",
                    "reported" + (" (quick run)" if d["quick"] else ""))]
    q = (d or {}).get("query")
    if d is None or q is None:
        out.append(Goal(area, g_q, NOT_MEASURED, NOT_MEASURED))
    else:
        misses = []
        if q["speedup_p50"] < q["goal_speedup"]:
            misses.append(_short(q["speedup_p50"], q["goal_speedup"], "×", True))
        if q["cosine"] < d["goals"]["cosine"]:
            misses.append(f"cosine {q['cosine']:.5f} < {d['goals']['cosine']}")
        best = q["variants"][f"ours_{q['precision']}_trimmed"]
        out.append(Goal(area, g_q,
                        f"{_x(q['speedup_p50'])} at p50 ({best['p50_ms']:.1f} against "
                        f"{q['variants']['plain_fp32_padded']['p50_ms']:.1f} ms), cosine "
                        f"{q['cosine']:.5f}", _verdict(misses, d["quick"])))
    return out


def _size(d: dict[str, Any] | None, n: int) -> dict[str, Any] | None:
    return next((s for s in (d or {}).get("sizes", []) if s["n"] == n), None)


def _largest(d: dict[str, Any] | None) -> str:
    sizes = [s["n"] for s in (d or {}).get("sizes", [])]
    return f" (largest size measured: {max(sizes):,})" if sizes else ""


def at_recall(rows: Sequence[dict[str, Any]], target: float) -> float | None:
    """p50 ms at ``target`` recall, interpolated along a sweep (None when never reached)."""
    pts = sorted((r["recall"], r["p50_ms"]) for r in rows)
    for (r0, t0), (r1, t1) in zip(pts, pts[1:], strict=False):
        if r0 <= target <= r1:
            return t0 if r1 == r0 else t0 + (t1 - t0) * (target - r0) / (r1 - r0)
    if pts and pts[0][0] >= target:
        return pts[0][1]
    return None


def _bound(sweep: Sequence[dict[str, Any]], target: float, p50: float | None) -> str:
    """A p50 at ``target`` recall as a cell: "≤" when the sweep starts above that recall."""
    if p50 is None:
        return "–"
    low = min(r["recall"] for r in sweep) > target
    return ("≤ " if low else "") + _cell(p50)


def hnsw_pair(s: dict[str, Any], recall: float
              ) -> tuple[dict[str, Any], dict[str, Any], float, float, float] | None:
    """FAISS HNSW and hnswlib of one size, the recall they are compared at (``recall``, or the
    highest both sweeps reach when one falls short of it) and their p50 there."""
    faiss_h = next((c for c in s["configs"] if c["name"].startswith("FAISS HNSW")), None)
    lib = next((c for c in s["configs"] if c["library"] == "hnswlib"), None)
    if faiss_h is None or lib is None:
        return None
    target = min(recall, *(max(r["recall"] for r in c["sweep"]) for c in (faiss_h, lib)))
    t_f, t_l = at_recall(faiss_h["sweep"], target), at_recall(lib["sweep"], target)
    if t_f is None or t_l is None:
        return None
    return faiss_h, lib, target, t_f, t_l


def index_goals(d: dict[str, Any] | None) -> list[Goal]:
    area = f"index, {INDEX_GOAL_N:,} vectors"
    goals = {"latency": "p50 ≤1 ms with recall@10 ≥0.95 (the setting index.choice picks)",
             "overhead": "VectorIndex overhead ≤10% against the raw FAISS index",
             "hnswlib": "FAISS HNSW compared with hnswlib at equal recall",
             "frontier": "index.choice picks a setting on the measured recall/latency frontier"}
    s = _size(d, INDEX_GOAL_N)
    if d is None or s is None:
        return [Goal(area, g, NOT_MEASURED + _largest(d), NOT_MEASURED) for g in goals.values()]
    quick = bool(d["quick"])
    goal = d["goal"]
    ch, chosen = s["choice"], s["choice"]["chosen"]
    out = []
    if chosen is None:
        out.append(Goal(area, goals["latency"], f"{_setting(ch['factory'], ch['params'])} was "
                                                "not among the measured settings", NOT_MEASURED))
    else:
        misses = []
        if chosen["p50_ms"] > goal["p50_ms"]:
            misses.append(_short(chosen["p50_ms"], goal["p50_ms"], " ms", False))
        if chosen["recall"] < goal["recall"]:
            misses.append(_short(chosen["recall"], goal["recall"], "", True))
        best = ch["best_meeting_goal"]
        out.append(Goal(area, goals["latency"],
                        f"{_setting(ch['factory'], ch['params'])}: recall {chosen['recall']}, "
                        f"p50 {chosen['p50_ms']:.3f} ms; fastest measured setting meeting both: "
                        + (f"{_point(best)} (recall {best['recall']}, p50 "
                           f"{best['p50_ms']:.3f} ms)" if best else "none"),
                        _verdict(misses, quick)))
    o = s["overhead"].get(ch["factory"])
    if o is None:
        out.append(Goal(area, goals["overhead"], NOT_MEASURED, NOT_MEASURED))
    else:
        misses = [f"{what} {_pct(v)}" for what, v in (("p50", o["p50_overhead"]),
                                                      ("batch time per query",
                                                       o["qps_overhead"]))
                  if v > 0.10]
        out.append(Goal(area, goals["overhead"],
                        f"{_setting(ch['factory'], o['params'])}: single-query p50 "
                        f"{o['ours_p50_ms']:.3f} against {o['raw_p50_ms']:.3f} ms "
                        f"({_pct(o['p50_overhead'])}); batch {o['ours_qps']:,.0f} against "
                        f"{o['raw_qps']:,.0f} QPS ({_pct(o['qps_overhead'])} time per query)",
                        _verdict(misses, quick)))
    pair = hnsw_pair(s, goal["recall"])
    if pair is None:
        out.append(Goal(area, goals["hnswlib"], NOT_MEASURED, NOT_MEASURED))
    else:
        fh, lib, target, t_f, t_l = pair
        on = f" (both on the first {fh['n']:,} vectors)" if fh["n"] != s["n"] else ""
        short = "" if target >= goal["recall"] else \
            f" (the highest both reach: neither reaches {goal['recall']})"
        text = (f"p50 at recall {target:.3g}{short}: FAISS {t_f:.3f} ms, hnswlib {t_l:.3f} ms "
                f"(FAISS/hnswlib {t_f / t_l:.2f}×); build {fh['build_s']:.0f} s against "
                f"{lib['build_s']:.0f} s{on}")
        out.append(Goal(area, goals["hnswlib"], text, "reported" + (" (quick run)" * quick)))
    if chosen is None:
        out.append(Goal(area, goals["frontier"], NOT_MEASURED, NOT_MEASURED))
    else:
        dom = ch["dominated_by"]
        misses = [f"{_point(p)} has higher recall ({p['recall']}) at a p50 more than 10% "
                  f"lower ({p['p50_ms']:.3f} ms)" for p in dom[:3]]
        out.append(Goal(area, goals["frontier"],
                        "no measured FAISS setting of this size has higher recall at a p50 more "
                        "than 10% lower" if not dom else f"{len(dom)} settings dominate it",
                        _verdict(misses, quick)))
    return out


def _row(d: dict[str, Any], scenario: str, c: int) -> dict[str, Any] | None:
    return next((r for r in d["rows"] if r["scenario"] == scenario and r["concurrency"] == c),
                None)


def http_goals(d: dict[str, Any] | None) -> list[Goal]:
    area = f"http, fusion-tiny, {HTTP_GOAL_ITEMS:,} items"
    g_s = "text search at 4 clients: p50 ≤10 ms, p99 ≤40 ms, zero errors"
    g_r = "search re-ranking 50 hits at 4 clients: p50 ≤30 ms"
    g_b = "ViT-B-32 text search at 1 client: p50 ≤20 ms"
    g_m = "text-query micro-batching: before/after"
    area_b = "http, ViT-B-32"
    if d is None:
        return [Goal(a, g, NOT_MEASURED, NOT_MEASURED)
                for a, g in ((area, g_s), (area, g_r), (area_b, g_b), (area, g_m))]
    goals, quick = d["goals"], bool(d["quick"])
    size_note = "" if d["items"] == HTTP_GOAL_ITEMS else \
        f"; at {d['items']:,} items, not the {HTTP_GOAL_ITEMS:,} the goal names"

    def judge(misses: list[str]) -> str:
        return NOT_MEASURED + " at this size" if size_note else _verdict(misses, quick)

    out = []
    s4 = _row(d, "search", 4)
    if s4 is None:
        out.append(Goal(area, g_s, NOT_MEASURED, NOT_MEASURED))
    else:
        misses = []
        if s4["p50_ms"] > goals["search_c4_p50_ms"]:
            misses.append("p50 " + _short(s4["p50_ms"], goals["search_c4_p50_ms"], " ms", False))
        if s4["p99_ms"] > goals["search_c4_p99_ms"]:
            misses.append("p99 " + _short(s4["p99_ms"], goals["search_c4_p99_ms"], " ms", False))
        errors = sum(r["errors"] for r in d["rows"])
        if errors:
            misses.append(f"{errors} errors over all scenarios")
        out.append(Goal(area, g_s, f"p50 {s4['p50_ms']:.1f} ms, p99 {s4['p99_ms']:.1f} ms, "
                                   f"{s4['rps']:.0f} req/s; errors in all scenarios: {errors}"
                                   + size_note, judge(misses)))
    r4 = _row(d, "search+rerank50", 4)
    if r4 is None:
        out.append(Goal(area, g_r, NOT_MEASURED, NOT_MEASURED))
    else:
        misses = [] if r4["p50_ms"] <= goals["rerank50_c4_p50_ms"] else \
            ["p50 " + _short(r4["p50_ms"], goals["rerank50_c4_p50_ms"], " ms", False)]
        out.append(Goal(area, g_r, f"p50 {r4['p50_ms']:.1f} ms, p99 {r4['p99_ms']:.1f} ms"
                        + size_note, judge(misses)))
    big = _row(d, "search [ViT-B-32]", 1)
    if big is None:
        out.append(Goal(area_b, g_b, NOT_MEASURED, NOT_MEASURED))
    else:
        limit = goals.get("vit_b32_c1_p50_ms", 20.0)
        misses = [] if big["p50_ms"] <= limit else ["p50 " + _short(big["p50_ms"], limit, " ms",
                                                                    False)]
        out.append(Goal(area_b, g_b, f"p50 {big['p50_ms']:.1f} ms, p99 {big['p99_ms']:.1f} ms "
                                   f"over {big.get('items', d['items']):,} items of its own"
                        + size_note, judge(misses)))
    pairs = micro_batching(d)
    if not pairs:
        out.append(Goal(area, g_m, NOT_MEASURED, NOT_MEASURED))
    else:
        text = "; ".join(f"{c} client{'s' * (c > 1)}: {_x(on['rps'] / off['rps'])} req/s, p50 "
                         f"{_x(on['p50_ms'] / off['p50_ms'])}" for c, on, off in pairs)
        out.append(Goal(area, g_m, "with against without: " + text + size_note,
                        "reported" + (" (quick run)" * quick)))
    return out


def micro_batching(d: dict[str, Any]) -> list[tuple[int, dict[str, Any], dict[str, Any]]]:
    out = []
    for c in d.get("levels", []):
        on, off = _row(d, "search", c), _row(d, "search, no micro-batching", c)
        if on is not None and off is not None:
            out.append((c, on, off))
    return out


def ingest_goals(d: dict[str, Any] | None) -> list[Goal]:
    area = f"ingest, {INGEST_GOAL_IMAGES:,} JPEGs 256×256"
    g = "end-to-end ingest ≥0.6 of the pure encode rate"
    if d is None:
        return [Goal(area, g, NOT_MEASURED, NOT_MEASURED)]
    text = (f"{d['end_to_end_images_per_s']:.0f} against {d['pure_encode_images_per_s']:.0f} "
            f"images/s = {d['ratio_end_to_end']:.2f} (start-up of {d['startup_s']:.1f} s "
            f"included; {d['ratio_steady']:.2f} after it)")
    if d["images"] != INGEST_GOAL_IMAGES:
        return [Goal(area, g, text + f"; {d['images']:,} images, not {INGEST_GOAL_IMAGES:,}",
                     NOT_MEASURED + " at this size")]
    misses = [] if d["ratio_end_to_end"] >= d["goal_ratio"] else \
        [_short(d["ratio_end_to_end"], d["goal_ratio"], "", True)]
    return [Goal(area, g, text, _verdict(misses, d["quick"]))]


def memory_goals(res: Results) -> list[Goal]:
    area = "memory"
    out = []
    h, ix, mem_d = res.get("http"), res.get("index"), res.get("memory")
    for n in MEMORY_SIZES:
        goal = f"server RSS at {n:,} items, patch tokens kept on disk"
        row = next((r for r in (mem_d or {}).get("rows", []) if r["items"] == n), None)
        if row is not None and mem_d is not None:
            row = {"searches": mem_d.get("searches"), **row}  # per row since the 1M run
            out.append(Goal(area, goal, _memory_line(row), "reported" + (
                " (quick run)" * bool(mem_d["quick"]))))
            continue
        if h is not None and h["items"] == n:
            mem = h["memory"]
            peak = max(m["peak"] for m in mem.values())
            out.append(Goal(area, goal, f"idle {_mib(mem['idle']['rss'])}, peak {_mib(peak)}; "
                                        f"patch tokens {_mib(h['token_bytes'])} in the catalog "
                                        f"on disk (data dir {_mib(h['data_dir_bytes'])})",
                            "reported" + (" (quick run)" * bool(h["quick"]))))
            continue
        text = NOT_MEASURED
        s = _size(ix, n)
        if s is not None:
            factory = s["choice"]["factory"]
            c = next((c for c in s["configs"] if c.get("factory") == factory and c["n"] == n), None)
            if c is not None:
                text += (f" (the HTTP benchmark serves {h['items']:,} items)" if h else "") + (
                    f"; the index index.choice picks at this size, `{factory}`, serialises to "
                    f"{c['bytes_per_vector'] * n / 2**30:.2f} GiB ({c['bytes_per_vector']:.0f} "
                    "bytes/vector, index.json)")
        out.append(Goal(area, goal, text, NOT_MEASURED))
    return out


TRIED = {
    "encode": "bf16 weights and inputs where the CPU has native bf16 (autocast was slower), "
              "inference mode, one to four threads, channels-last input and torch.compile: the "
              "settings table under Encoding. The images ratio is bounded by how much faster "
              "this CPU runs a bf16 matmul than an fp32 one in the same process (the matmul "
              "line under Encoding); ViT-B-32 already reaches most of that bf16 rate.",
    "index": "the chooser's nprobe default (nlist / 256, it was nlist / 64) and the wrapper's "
             "hit lists built from tolist(); the wrapper still maps labels through FAISS's "
             "IndexIDMap2, which the raw index does not.",
    "http": "wrk as the load generator instead of a Python client on the same two cores; the "
            "text tower's attention kernel called directly, in fp32 where one query is faster "
            "so; file URLs resolved once instead of per hit; factored cross-attention for "
            "re-ranking; text-query micro-batching; one torch thread per request. On two "
            "cores the client, the event loop and the request threads share the CPU and the "
            "GIL, which bounds concurrency 4.",
    "ingest": "JPEGs decoded reduced by libjpeg (to at least twice the model input), two "
              "single-thread encoders on alternate batches, decode in a thread pool and one "
              "writer thread committing batches in single transactions, no garbage collection "
              "during start-up. Start-up (imports and model load) is counted in the ratio.",
}


def _memory_line(r: dict[str, Any]) -> str:
    return (f"`{r['index']}`: idle {_mib(r['rss_idle'])}, after {r['searches']} re-ranked "
            f"searches {_mib(r['rss_after_search'])}, peak {_mib(r['rss_peak'])}; patch tokens "
            f"{r['token_bytes'] / 2**30:.2f} GiB on disk (data dir "
            f"{r['data_dir_bytes'] / 2**30:.2f} GiB)")


def goals(res: Results) -> list[Goal]:
    return [*encode_goals(res.get("encode")), *index_goals(res.get("index")),
            *http_goals(res.get("http")), *ingest_goals(res.get("ingest")), *memory_goals(res)]


# ---- sections -----------------------------------------------------------------------------------

def encode(d: dict[str, Any]) -> str:
    out = [f"Matmul 2048³ in the same process: fp32 {d['matmul_gflops']['fp32']:.0f} GFLOP/s, "
           f"bf16 {d['matmul_gflops']['bf16']:.0f} GFLOP/s.", ""]
    out.append(table([[r["model"], r["precision"], r["batch"], r["images"],
                       r["plain_images_per_s"], r["ours_images_per_s"], _x(r["image_speedup"]),
                       f"{r['image_cosine_min']:.5f}", r["texts"], r["plain_texts_per_s"],
                       r["ours_texts_per_s"], _x(r["text_speedup"]),
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
        out.append(table([[k, v["p50_ms"], v["p99_ms"], v["mean_ms"], _x(v["speedup_p50"]),
                           f"{v['cosine']:.5f}"] for k, v in q["variants"].items()],
                         ["variant", "p50 ms", "p99 ms", "mean ms", "plain/this (p50)",
                          "cos"]))
    if "variants" in d:
        out += ["", "ViT-B-32 vision forward (pixels prepared), settings tried:", ""]
        out.append(table([[r["variant"], r["images_per_s"], _x(r["vs_plain"]),
                           r.get("compile_s"), r.get("error")] for r in d["variants"]],
                         ["setting", "images/s", "this/plain fp32", "compile s", "error"]))
    return "\n".join(out)


def index(d: dict[str, Any]) -> str:
    out = [f"Vectors: a Gaussian mixture shaped like embeddings ({_cell(d['data_model'])}); "
           f"k = {d['k']}; FAISS on {d['threads']} threads; HNSW {_cell(d['hnsw'])}.", ""]
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
                        _pct(o["p50_overhead"]), o["raw_qps"], o["ours_qps"],
                        _pct(o["qps_overhead"])] for f, o in s["overhead"].items()],
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
        out.append(f"index.choice picks {_setting(ch['factory'], ch['params'])}: "
                   + (f"recall {chosen['recall']}, p50 {chosen['p50_ms']} ms"
                      if chosen else NOT_MEASURED)
                   + f"; meets p50 ≤{d['goal']['p50_ms']} ms with recall ≥{d['goal']['recall']}: "
                   + ("yes" if ch["chosen_meets_goal"] else "no")
                   + "; fastest measured setting meeting both: "
                   + (f"{_point(best)} (recall {best['recall']}, p50 {best['p50_ms']} ms)"
                      if best else "none") + ".")
        out.append("")
    return "\n".join(out)


def _client(r: dict[str, Any]) -> str:
    # rows written before wrk drove the searches carry no client: httpx produced them all
    return str(r.get("client", "httpx"))


def client_comparison(d: dict[str, Any]) -> list[tuple[int, dict[str, Any], dict[str, Any]]]:
    """(clients, wrk row, httpx row) for the search levels both clients drove in one run."""
    out = []
    for c in d.get("levels", []):
        w, h = _row(d, "search", c), _row(d, "search [httpx client]", c)
        if w is not None and h is not None and _client(w) == "wrk" and _client(h) == "httpx":
            out.append((c, w, h))
    return out


def http(d: dict[str, Any]) -> str:
    rows = [[r["scenario"], _client(r), r.get("model", d["model"]), r.get("items", d["items"]),
             r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"], r["errors"],
             r.get("server_cpu_cores"),
             r["server_cpu_cores"] / r["rps"] * 1000 if r["rps"] else None,
             r.get("client_cpu_cores")] for r in d["rows"]]
    mem = d["memory"]
    out = [f"{d['duration_s']:g} s per level after {d['warmup_s']:g} s of warm-up; closed "
           f"loop; {d['client']}. Server: {_cell(d['server'])}. Collection bulk-loaded in "
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
                table([[c, on["rps"], off["rps"], _x(on["rps"] / off["rps"]), on["p50_ms"],
                        off["p50_ms"], _x(on["p50_ms"] / off["p50_ms"]), on["p99_ms"],
                        off["p99_ms"]] for c, on, off in pairs],
                      ["clients", "req/s on", "req/s off", "on/off", "p50 ms on", "p50 ms off",
                       "on/off", "p99 ms on", "p99 ms off"]), ""]
    cold = d["cold_start"]
    out.append(f"Cold start: the first {cold['requests']} queries of a fresh server, p50 "
               f"{cold['p50_ms']:.1f} ms, max {cold['max_ms']:.0f} ms.")
    out.append("")
    out.append(f"Server RSS: idle {_mib(mem['idle']['rss'])}; peak "
               f"{_mib(max(m['peak'] for m in mem.values()))}; data dir "
               f"{_mib(d['data_dir_bytes'])} on disk, of which patch tokens "
               f"{_mib(d['token_bytes'])}.")
    big = d.get("big_model")
    if big:
        out.append(f"The {big['model']} server over its {big['items']:,} items: idle RSS "
                   f"{_mib(big['memory_idle']['rss'])}.")
    return "\n".join(out)


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
    return "\n".join([
        f"A uvicorn server ({d['model']}, re-rank depth {d['rerank_depth']}) over a collection "
        "bulk-loaded with patch tokens; RSS read from /proc (VmRSS, VmHWM) when ready and after "
        "re-ranked text searches (every fourth with a tag filter). Re-ranking reads each "
        "query's candidates' tokens from the SQLite catalog.", "",
        table([[f"{r['items']:,}", f"`{r['index']}`", _mib(r["rss_idle"]),
                _mib(r["rss_after_search"]), _mib(r["rss_peak"]), f"{r['token_bytes'] / 2**30:.2f}",
                f"{r['data_dir_bytes'] / 2**30:.2f}", r["start_s"]] for r in d["rows"]],
              ["items", "index", "RSS idle", "RSS after searches", "RSS peak",
               "patch tokens on disk GiB", "data dir GiB", "server start s"]),
    ])


SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], str], str]] = {
    "encode": ("Encoding", encode, "encode speed, ours against plain open_clip"),
    "index": ("Vector search", index, "recall against single-query latency"),
    "http": ("HTTP", http, "throughput and latency against concurrent clients"),
    "ingest": ("Bulk ingest", ingest, "ingest against encode-only rate"),
    "memory": ("Server memory", memory, "server RSS against bytes on disk"),
}


def _machine_table(res: Results) -> str:
    rows = []
    for name, d in res.items():
        m, r = d["machine"], d.get("run", {})
        rows.append([name, "quick" if d["quick"] else "full", r.get("wall_s"), r.get("cpu_s"),
                     m["date_utc"], " / ".join(str(x) for x in m.get("loadavg_1_5_15", []))])
    return table(rows, ["benchmark", "run", "wall s", "CPU s", "written (UTC)",
                        "load average 1/5/15 min when written"])


def _machine(res: Results) -> str:
    facts = {name: d["machine"] for name, d in res.items()}
    keys = ("cpu", "cpu_flags", "cores", "ram_gib", "native_bf16", "torch", "torch_threads",
            "open_clip", "faiss", "numpy", "python")
    distinct = {json.dumps([m.get(k) for k in keys]) for m in facts.values()}
    m = next(iter(facts.values()))
    flags = m.get("cpu_flags")
    flag_text = (f"flags {', '.join(flags) if flags else 'none'} of avx2, avx512f, avx512_vnni, "
                 "avx512_bf16, amx_bf16" if flags is not None else "flags not recorded")
    gpu = (m["gpu"] or "none") if "gpu" in m else "not recorded"
    line = (f"CPU **{m['cpu']}** (from {m.get('cpu_source', '/proc/cpuinfo')}), {flag_text}, "
            f"{m['cores']} cores, {m['ram_gib']} GiB "
            f"RAM, native bf16: {m['native_bf16']}, GPU: {gpu}; "
            f"torch {m['torch']} "
            f"({m['torch_threads']} threads), open_clip {m['open_clip']}, FAISS {m['faiss']}, "
            f"NumPy {m['numpy']}, Python {m['python']}.")
    if len(distinct) > 1:
        line += " The files were not all written on this machine: " + "; ".join(
            f"{n}: {f['cpu']} ({', '.join(f.get('cpu_flags') or []) or 'flags not recorded'}), "
            f"{f['cores']} cores, torch {f['torch']}" for n, f in facts.items())
    return line


def render(res: Results, folder: Path, doc: Path) -> str:
    rel = _shown(folder)
    quick = [n for n, d in res.items() if d["quick"]]
    out = ["# Benchmarks", "",
           f"Generated by `fusion-search bench report` from `{rel}/*.json`; edit the code in "
           "`bench/`, not this page. Every figure below is read from those files, each "
           "comparison is between figures of the same run, and what they do not hold reads "
           f"\"{NOT_MEASURED}\".", ""]
    if quick:
        out += [f"> **Quick (CI-sized) results** for {', '.join(quick)}: small sizes and short "
                "runs that only show the benchmarks work. They are not the recorded figures.",
                ""]
    out += ["## Reproduce", "",
            "On a quiet machine (nothing else using the CPU), from the repository root with the "
            "`bench` extra installed (`pip install -e '.[bench]'`):", "", "```sh",
            "fusion-search bench all          # the recorded run (about an hour on 2 "
            "cores): bench/results/*.json + *.png, then this page",
            "fusion-search bench report       # only rewrite this page from bench/results/",
            "fusion-search bench all --quick  # CI-sized smoke run (under two minutes), "
            f"results and page in {_shown(QUICK_DIR)}/",
            "```", ""]
    if res:
        out += ["The commands that wrote the files this page reads:", "", "```sh",
                *(_cmd(d) for d in res.values()), "```", ""]
    out += ["## Machine", ""]
    if res:
        out += [_machine(res), "", _machine_table(res), "",
                "A load average above the core count while a benchmark ran means other work "
                "shared the machine; its figures are then lower than this machine can do.", "",
                "The flags are those of avx2, avx512f, avx512_vnni, avx512_bf16 and amx_bf16 "
                "the CPU has (`models.precision.cpu_info`, the same reading `/api/v1/info` "
                "reports): `FUSION_PRECISION=auto` runs the encoders in bf16 only with "
                "avx512_bf16 or amx_bf16, in fp32 otherwise. These benchmarks run the model on "
                "the CPU; the service chooses its device with `FUSION_DEVICE` (auto, cpu, cuda, "
                "cuda:N; auto takes a GPU where torch sees one), and GPU names one where the "
                "machine had it.", ""]
    else:
        out += [f"{NOT_MEASURED}: no result files in `{rel}/`.", ""]
    judged = goals(res)
    out += ["## Goals", "",
            table([[g.area, g.goal, g.measured, g.verdict] for g in judged],
                  ["area", "goal", "measured (same run)", "verdict"]), ""]
    missed = sorted({g.area.split(",")[0] for g in judged if g.verdict.startswith("not met")})
    if missed:
        out += ["What was tried toward the goals not met (the figures are in the sections "
                "below):", "", *(f"- **{a}**: {TRIED[a]}" for a in missed if a in TRIED), ""]
    for name, (title, render_one, alt) in SECTIONS.items():
        out += [f"## {title}", ""]
        d = res.get(name)
        if d is None:
            out += [f"{NOT_MEASURED}: `{rel}/{name}.json` is missing (`fusion-search bench "
                    f"{name}` writes it).", ""]
            continue
        out += ["```sh", _cmd(d), "```", "", _figure(name, folder, doc, alt), "",
                render_one(d), ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    p.add_argument("results", nargs="?", default=str(RESULTS_DIR),
                   help="folder of result JSON files (default bench/results)")
    p.add_argument("--doc", help="page to write (default docs/benchmarks.md for bench/results, "
                                 "<results>/benchmarks.md otherwise)")
    args = p.parse_args(argv)
    folder = Path(args.results)
    write(folder, Path(args.doc) if args.doc else default_doc(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
