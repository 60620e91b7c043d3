"""Benchmarks for fusion-search: each module measures one part and writes JSON + PNG results.

Run them with ``fusion-search bench {encode,index,http,ingest,all} [--quick]``; results go to
``bench/results/`` unless ``--out`` or ``FUSION_BENCH_OUT`` names another folder.
"""
