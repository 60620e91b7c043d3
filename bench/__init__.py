"""Benchmarks for fusion-search: each module measures one part and writes JSON + PNG results.

Run them with ``fusion-search bench {encode,index,http,ingest,all} [--quick]``; results go to
``bench/results/`` (``bench/results/quick/`` with ``--quick``) unless ``--out`` or
``FUSION_BENCH_OUT`` names another folder. ``fusion-search bench report`` turns them into
docs/benchmarks.md.
"""
