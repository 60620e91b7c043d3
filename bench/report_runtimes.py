"""The benchmarks page's Runtimes section, written from ``runtimes.json`` (``bench.runtimes``)."""

from __future__ import annotations

from typing import Any

from .report_cells import cell, table, times


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
        verdicts = "; ".join(f"{k}: {v['speedup']}x, {v['quality']}"
                             f"{' (passes)' if v['ok'] else ''}"
                             for k, v in a["candidates"].items())
        out += [f"`FUSION_RUNTIME=auto`'s rule on these figures (>= {rule['min_speedup']}x "
                f"{a['against']} as the geometric mean of images, query and match, none slower; "
                f"cosine >= {rule['min_cosine']}; int8: R@1 within "
                f"{rule['int8_r1_tolerance']}) picks **{a['pick']}**. {verdicts}.", ""]
    out.append("The service decides from its own probe at first load on the machine that serves "
               "(`models.runtime_probe`, recorded beside the exported graphs), not from this "
               "page; int8 is measured here and not chosen by the probe, whose seconds cannot "
               "hold an R@1 check.")
    return "\n".join(out)
