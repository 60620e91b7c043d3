"""The `fusion-search` command: serve, ingest, backup, reembed, demo-data, train, eval,
calibrate, bench."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

WORKER_HEALTHCHECK_S = 120


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from .settings import Settings
    from .startup import StartupError, preflight

    if args.data:
        os.environ["FUSION_DATA_DIR"] = str(args.data)
    if args.demo:
        os.environ["FUSION_DEMO"] = "true"
    if args.workers > 1 and not os.environ.get("FUSION_TORCH_THREADS"):
        # N processes share the cores: each gets its share of threads, not all of them (on 2
        # cores, 2 workers of one thread answer about twice the searches of one worker)
        os.environ["FUSION_TORCH_THREADS"] = str(max(1, len(os.sched_getaffinity(0))
                                                     // args.workers))
    # Refused starts end here with one message and status 2, before a port is bound or the
    # model loads (a failure in the app's lifespan would print uvicorn's stack trace).
    try:
        preflight(args.host, Settings())
    except (StartupError, ValidationError) as exc:
        print(f"fusion-search serve: {exc}", file=sys.stderr)
        return 2
    # Each worker process builds its own app (model, store) from the factory; they share the
    # data dir, following each other's writes through the catalog's change log. The supervisor
    # pings each worker; one importing torch or loading its model can hold the interpreter lock
    # for seconds on busy cores, and uvicorn's 5 s default would kill and respawn it forever.
    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port,
                log_level=args.log_level, workers=args.workers,
                timeout_worker_healthcheck=WORKER_HEALTHCHECK_S)
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from .ingest import IngestSettingsError, ingest

    try:
        if args.ray:
            from .ingest_ray import ingest_ray

            report = ingest_ray(args.paths, address=args.ray, data_dir=args.data,
                                device=args.device, caption=args.caption, tags=args.tags,
                                batch=args.batch, encoders=args.encoders)
        else:
            report = ingest(args.paths, data_dir=args.data, device=args.device,
                            caption=args.caption, tags=args.tags, batch=args.batch,
                            workers=args.workers, encoders=args.encoders or 2)
    except IngestSettingsError as exc:  # e.g. --device cuda on a machine without a GPU
        print(f"fusion-search ingest: {exc}", file=sys.stderr)
        return 2
    report.print()
    return 0


def _backup(args: argparse.Namespace) -> int:
    from .datadir import backup

    summary = backup(args.dest, data_dir=args.data)
    print(json.dumps(summary))
    return 0 if summary["integrity"] == "ok" else 1


def _reembed(args: argparse.Namespace) -> int:
    from .datadir import reembed

    print(json.dumps(reembed(args.source, data_dir=args.data, batch=args.batch)))
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from models import synthetic as syn

    tsv = syn.write_dataset(Path(args.out), args.n, split=args.split)
    print(tsv)
    return 0


def _train_answer_heads(args: argparse.Namespace) -> int:
    from models.train_ask import AskTrainConfig, run_answer_heads

    sizes = {k: getattr(args, k) for k in ("pool", "threads", "randomise", "batch", "ask_steps",
                                           "describe_steps")}
    cfg = AskTrainConfig(model=args.backbone, pretrained=args.pretrained, out=args.out,
                         work_dir=args.work_dir, only=tuple(args.only.split(",")),
                         **{k: v for k, v in sizes.items() if v is not None})
    try:
        result = run_answer_heads(cfg)
    except ValueError as exc:
        raise SystemExit(f"fusion-search train: {exc}") from exc
    print(json.dumps(result))
    return 0


def _train(args: argparse.Namespace) -> int:
    from models.train import TrainConfig, run

    if args.only:
        return _train_answer_heads(args)

    # the step counts and sizes left out keep TrainConfig's defaults: the recipe is stated once
    sizes = {k: getattr(args, k) for k in ("encoder_steps", "fusion_steps", "batch", "pool",
                                           "triplets", "threads", "image_size", "randomise",
                                           "paraphrase", "robust_steps", "robust_lr", "init")}
    cfg = TrainConfig(model=args.backbone, pretrained=args.pretrained, data=args.data,
                      out=args.out, work_dir=args.work_dir,
                      **{k: v for k, v in sizes.items() if v is not None})
    result = run(cfg, plot=Path(args.plot) if args.plot else None)
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("loss")}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from models import load_model
    from models.evaluate import evaluate, format_table

    model = load_model(args.model, args.pretrained, fusion=args.fusion, precision=args.precision,
                       image_size=args.image_size, device=args.device, ask=args.ask_heads,
                       describe=args.describe_head)
    if args.only:
        from models.evaluate_ask import evaluate_answers, format_answers_table

        answers = evaluate_answers(model, n=args.n, ood_split=args.ood_split)
        print(json.dumps(answers) if args.json else format_answers_table(answers))
        return 0
    report = evaluate(model, n=args.n, depth=args.depth, ood_split=args.ood_split)
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from models import load_model
    from models.calibrate import calibrate, write_temperature
    from models.encoder import bundled_paths

    model = load_model(args.model, args.pretrained, fusion=args.fusion, precision=args.precision)
    result = calibrate(model, n=args.n, depth=args.depth,
                       plot_path=Path(args.plot) if args.plot else None)
    target = (Path(args.fusion.replace(".safetensors", ".json")) if args.fusion
              else bundled_paths(args.model)[2])
    if args.write:
        write_temperature(target, result)
    print(json.dumps({**result, "written_to": str(target) if args.write else None}))
    return 0


def _bench(args: argparse.Namespace) -> int:
    # bench/ is imported only here, when the sub-command runs: the service, the other
    # commands and `--help` start without it (it need not even be installed).
    try:
        from bench.run import build_parser as bench_parser
        from bench.run import run
    except ImportError as exc:
        raise SystemExit(f"fusion-search bench needs the bench package ({exc}); "
                         "run it from a source checkout: pip install -e '.[bench]'") from exc
    return run(bench_parser().parse_args(args.bench_argv))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusion-search", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: this machine only); another one needs "
                        "FUSION_API_KEY or FUSION_ALLOW_OPEN_WRITES=true")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--data", help="data dir (default FUSION_DATA_DIR or ./data)")
    s.add_argument("--demo", action="store_true", help="seed generated scenes when empty")
    s.add_argument("--log-level", default="info")
    s.add_argument("--workers", type=_positive, default=1,
                   help="server processes on this port and data dir (each loads the model and "
                        "runs on cores/N threads unless FUSION_TORCH_THREADS says otherwise)")
    s.set_defaults(fn=_serve)

    s = sub.add_parser("ingest", help="add images from folders, files or a TSV")
    s.add_argument("paths", nargs="+")
    s.add_argument("--data")
    s.add_argument("--caption", help="caption for every image (TSV titles otherwise)")
    s.add_argument("--tags", action="append", help="tags for every image (comma-separated)")
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 2),
                   help="decoding threads")
    s.add_argument("--encoders", type=int,
                   help="batches encoded at once (torch threads are shared out among them; "
                        "default 2); with --ray: encoder actors (default one per GPU, or 2)")
    s.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: FUSION_DEVICE, auto)")
    s.add_argument("--ray", nargs="?", const="auto", metavar="auto|ADDRESS",
                   help="decode and encode on a Ray cluster (needs the scale extra): auto "
                        "joins the one this machine knows or starts a local one; or a Ray "
                        "address (ray://head:10001). Put it after the paths")
    s.set_defaults(fn=_ingest)

    s = sub.add_parser("backup", help="copy a data dir (catalog + files), safe while serving")
    s.add_argument("dest", help="a new or empty folder; restore by serving it as the data dir")
    s.add_argument("--data", help="data dir (default FUSION_DATA_DIR or ./data)")
    s.set_defaults(fn=_backup)

    s = sub.add_parser("reembed", help="re-encode a data dir's images into a new data dir "
                                          "with the configured model (a model upgrade)")
    s.add_argument("source", help="the old data dir or a backup of it (not being written to)")
    s.add_argument("--data", help="the new data dir (default FUSION_DATA_DIR or ./data)")
    s.add_argument("--batch", type=int, default=64)
    s.set_defaults(fn=_reembed)

    s = sub.add_parser("demo-data", help="write generated scenes (PNG) and captions.tsv")
    s.add_argument("out")
    s.add_argument("--n", type=int, default=300)
    s.add_argument("--split", default="val", choices=["train", "val", "test", "heldout"])
    s.set_defaults(fn=_demo_data)

    s = sub.add_parser("train", help="train the dual encoder and fusion heads")
    s.add_argument("--backbone", default="fusion-tiny")
    s.add_argument("--pretrained", default=None)
    s.add_argument("--data", default=None, help="TSV of your own captioned images")
    s.add_argument("--out", default="models/weights")
    s.add_argument("--work-dir", default="runs/train")
    # defaults (None here): models.train.TrainConfig, the bundled recipe
    s.add_argument("--encoder-steps", type=int, help="stage-1 steps")
    s.add_argument("--fusion-steps", type=int, help="stage-2 steps")
    s.add_argument("--batch", type=int)
    s.add_argument("--pool", type=int, help="rendered training scenes")
    s.add_argument("--triplets", type=int, help="rendered composed triplets")
    s.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    s.add_argument("--image-size", type=int,
                   help="input size other than the backbone config's (serve it with the same)")
    s.add_argument("--randomise", type=float,
                   help="share of the robust phase's scenes and of the triplets drawn with "
                   "domain randomisation (default 0.3; docs/model-card.md)")
    s.add_argument("--paraphrase", type=float,
                   help="share of the robust phase's captions with surface noise (default 0.25)")
    s.add_argument("--robust-steps", type=int,
                   help="the curriculum's second stage-1 phase: this many steps over the "
                   "randomised pool after the plain phase (default 1200; 0: plain recipe only)")
    s.add_argument("--robust-lr", type=float, help="peak learning rate of those steps")
    s.add_argument("--init", help="start stage 1 from this backbone file (with --encoder-steps 0:"
                   " run only the robust phase on it)")
    s.add_argument("--plot", default="docs/training-loss.png")
    s.add_argument("--only", help="ask,describe: train only the question-answering heads and "
                   "the caption decoder on the existing backbone (models.train_ask)")
    s.add_argument("--ask-steps", type=int, help="with --only: question-answering steps")
    s.add_argument("--describe-steps", type=int, help="with --only: caption decoder steps")
    s.set_defaults(fn=_train)

    s = sub.add_parser("eval", help="retrieval metrics in distribution (the synthetic test "
                                       "split) and out of it (the OOD renderer), side by side")
    s.add_argument("--model", default="fusion-tiny")
    s.add_argument("--pretrained", default=None)
    s.add_argument("--fusion", default=None,
                   help="fusion-head safetensors (default: the bundled heads, bundled backbone)")
    s.add_argument("--precision", default="auto")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--n", type=int, default=1000, help="gallery size")
    s.add_argument("--depth", type=int, default=20, help="re-rank depth")
    s.add_argument("--image-size", type=int, help="the input size the backbone was trained at")
    s.add_argument("--ood-split", default="ood-test", choices=["ood-test", "ood-val"],
                   help="OOD split: ood-test to report, ood-val for choices made after training")
    s.add_argument("--json", action="store_true", help="the full report as JSON (default: a "
                                                       "table of every metric, both worlds)")
    s.add_argument("--only", choices=["ask,describe", "ask", "describe"],
                   help="evaluate the question-answering heads and the caption decoder instead "
                        "(models.evaluate_ask; --n questions and images per world)")
    s.add_argument("--ask-heads", help="question-answering heads (default: the bundled ones)")
    s.add_argument("--describe-head", help="caption decoder (default: the bundled one)")
    s.set_defaults(fn=_eval)

    s = sub.add_parser("calibrate", help="fit the match head's temperature on the OOD "
                                            "validation split; reliability diagrams (PNG)")
    s.add_argument("--model", default="fusion-tiny")
    s.add_argument("--pretrained", default=None)
    s.add_argument("--fusion", default=None, help="fusion-head safetensors (default: bundled)")
    s.add_argument("--precision", default="auto")
    s.add_argument("--n", type=int, default=1000, help="gallery size of each split")
    s.add_argument("--depth", type=int, default=20, help="candidates per query (re-rank depth)")
    s.add_argument("--plot", default="docs/reliability.png")
    s.add_argument("--write", action="store_true",
                   help="record the temperature in the fusion heads' JSON file")
    s.set_defaults(fn=_calibrate)

    # Its options belong to bench.run and are parsed there (`fusion-search bench --help`).
    s = sub.add_parser("bench", add_help=False,
                       help="benchmarks (JSON + PNG under bench/results) and docs/benchmarks.md")
    s.set_defaults(fn=_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.cmd == "bench":
        args.bench_argv = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
