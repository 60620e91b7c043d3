"""The benchmarks page's Runtimes section, written from ``runtimes.json`` (``bench.runtimes``)."""

from __future__ import annotations

from typing import Any

from .report_cells import NOT_MEASURED, cell, table, times
from .report_goals import Goal, _short, _verdict


def _x(row: dict[str, Any], key: str) -> str:
    return times(row[key]) if key in row else "-"


def _r1(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.3f}" if key in row else "-"


def runtimes(d: dict[str, Any]) -> str:
    depth = d["rerank_depth"]
    out = [f"Each model's rows come from one process on the same weights and inputs: images/s "
           f"of the image encoder's forward (embedding and patch tokens) on normalised pixels; "
           f"one short query {d['query']!r} end to end (tokenise, encode; p50); the match of "
           f"that query against {depth} stored images' tokens (p50); the cosine of image and "
           "text embeddings to fp32 torch; text->image R@1 and attention re-rank R@1 (depth 20, "
           "blended as the service does) on the test split and the OOD set, for the bundled "
           "trained model only. \"x torch auto\" is against what the service runs without "
           "`FUSION_RUNTIME` (`FUSION_PRECISION=auto`). int8: "
           f"{d['int8']['method']}, {d['int8']['weights']} weights, {d['int8']['activations']} "
           f"activations, {d['int8']['ops']} only, calibrated on {d['int8']['calibration']}.",
           ""]
    m0 = d.get("machine", {})
    load = (m0.get("loadavg_1_5_15") or [0.0])[0]
    if load > (m0.get("cores") or 1):
        out += [f"**Contended run**: load average {load} on {m0.get('cores')} cores of "
                f"{m0.get('cpu')} when it was written (other work, a training run among it, had "
                "most of the CPU). Every ratio is between rows of this run, but timings this "
                "disturbed are noisy: read them as directions, not as this CPU's speed.", ""]
    rule = d["rule"]
    for m in d["models"]:
        out += [f"**{m['model']}** ({'bundled, trained' if m['trained'] else 'random weights'}"
                f"; batch {m['batch']}, {m['images']} images; export {m['export_s']} s, int8 "
                f"calibration {m['quantize_s']} s, both cached by weights hash):", ""]
        rows = []
        for r in m["rows"]:
            if "skipped" in r:
                rows.append([r["variant"], f"skipped: {r['skipped']}", *["-"] * 11])
                continue
            rows.append([r["variant"], cell(r["images_per_s"]), _x(r, "images_x_torch_fp32"),
                         _x(r, "images_x_torch_auto"), cell(r["query_p50_ms"]),
                         _x(r, "query_x_torch_auto"), cell(r.get(f"rerank{depth}_p50_ms")),
                         _x(r, "rerank_x_torch_auto"),
                         f"{r['image_cosine']:.4f} / {r['text_cosine']:.4f}",
                         _r1(r, "t2i_r1_test"), _r1(r, "t2i_r1_ood"), _r1(r, "rerank_r1_test"),
                         _r1(r, "rerank_r1_ood")])
        out += [table(rows, ["variant", "img/s", "x torch fp32", "x torch auto",
                             "query p50 ms", "x torch auto", f"match {depth} p50 ms",
                             "x torch auto", "cosine img / text", "R@1 test", "R@1 OOD",
                             "re-rank R@1 test", "re-rank R@1 OOD"]), ""]
        a = m["auto"]
        out += [_auto_line(a, rule), ""]
    out.append("The service decides from its own probe at first load on the machine that serves "
               "(`models.runtime_probe`, recorded beside the exported graphs), not from this "
               "page; int8 is measured here and not chosen by the probe, whose seconds cannot "
               "hold an R@1 check.")
    return "\n".join(out)


def _auto_line(a: dict[str, Any], rule: dict[str, Any]) -> str:
    if "parts" not in a:  # a file written under the one-runtime rule
        return (f"`FUSION_RUNTIME=auto`'s rule then (one runtime for every part) picked "
                f"**{a['pick']}**.")
    verdicts = "; ".join(f"{k}: {', '.join(f'{p} {x}x' for p, x in v['ratios'].items())}, "
                         f"{v['quality']}{'' if v['ok'] else ' (fails)'}"
                         for k, v in a["candidates"].items())
    picks = ", ".join(f"{p} on **{name}**" for p, name in a["parts"].items())
    return (f"`FUSION_RUNTIME=auto`'s rule on these figures (each part on the runtime "
            f">= {rule['min_speedup']}x {a['against']} on it, cosine >= {rule['min_cosine']}; "
            f"int8: R@1 within {rule['int8_r1_tolerance']}) runs {picks}. {verdicts}.")


def _pick(m: dict[str, Any], part: str) -> str:
    a = m["auto"]
    return str(a["parts"].get(part, a["against"]) if "parts" in a else a["pick"])


def runtimes_goals(d: dict[str, Any] | None) -> list[Goal]:
    """The encode goals judged again on the runtime ``FUSION_RUNTIME=auto`` picks on this CPU
    (the goals of the performance issue, round two: with ONNX Runtime and OpenVINO in play)."""
    area = "runtimes, ViT-B-32"
    g_img = ("images ≥3× the plain fp32 open_clip loop, on the runtime `FUSION_RUNTIME=auto` "
             "runs images on, cosine ≥0.999")
    g_q = ("one short text query ≥5× faster than the plain call, on the runtime auto runs "
           "text on, cosine ≥0.999")
    m = next((m for m in (d or {}).get("models", []) if m["model"] == "ViT-B-32"), None)
    if d is None or m is None:
        return [Goal(area, g_img, NOT_MEASURED, NOT_MEASURED),
                Goal(area, g_q, NOT_MEASURED, NOT_MEASURED)]
    rows = {r["variant"]: r for r in m["rows"] if "skipped" not in r}
    plain = rows["plain open_clip fp32"]
    torch_auto = next(v for k, v in rows.items() if k.startswith("torch auto"))
    min_cos = d["rule"]["min_cosine"]
    out = []
    for goal, part, target in ((g_img, "images", 3.0), (g_q, "text", 5.0)):
        pick = _pick(m, part)
        r = rows.get(pick) or torch_auto
        if part == "images":
            x, cos = r["images_per_s"] / plain["images_per_s"], r["image_cosine"]
            figures = f"{r['images_per_s']:.1f} against {plain['images_per_s']:.1f} images/s"
        else:
            x, cos = plain["query_p50_ms"] / r["query_p50_ms"], r["text_cosine"]
            figures = f"p50 {r['query_p50_ms']:.2f} against {plain['query_p50_ms']:.2f} ms"
        misses = [] if x >= target else [_short(x, target, "×", True)]
        if cos < min_cos:
            misses.append(f"cosine {cos:.5f} < {min_cos}")
        out.append(Goal(area, goal, f"auto runs {part} on **{pick}**: {times(x)} ({figures}), "
                                    f"cosine {cos:.5f}", _verdict(misses, d["quick"])))
    return out
