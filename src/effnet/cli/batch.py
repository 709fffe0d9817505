"""`effnet batch`: many images -> a Parquet dataset, resumable and exactly once, locally or on Ray."""
from __future__ import annotations

import argparse
import sys

from .options import (
    TerminalProgress,
    decode_option,
    engine_choice,
    engine_options,
    model_option,
    positive_int,
    weights_option,
)


def add(sub: argparse._SubParsersAction) -> None:
    from ..batch import DEFAULT_SHARD_SIZE, RUNNERS

    p = sub.add_parser("batch", help="classify many images into a Parquet dataset (resumable, exactly once)",
                       description="Classify files, folders, text lists of paths/URIs and Parquet manifests "
                                   "(a `uri` column, optional unique `id`) into a Parquet dataset under --output, "
                                   "one row per input. Run the same command again to resume after a crash.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image file or URI, folder, *.txt/*.lst list (one path or URI a line), *.parquet manifest")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="the dataset's folder")
    model_option(p)
    weights_option(p)
    engine_options(p)
    decode_option(p)
    p.add_argument("--top", type=positive_int, default=5, metavar="K", help="predictions per image (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="images per engine call (default 8 on CPUs, 64 on GPUs)")
    p.add_argument("--runner", "--engine", dest="runner", choices=RUNNERS, default="local",
                   help="local (this machine, no Ray needed; default) or ray (Ray Data actors, effnet[ray]; with "
                        "--device cuda each actor takes one GPU); --engine is the same option's older name")
    p.add_argument("--ray-address", metavar="ADDR", help="the Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--workers", type=positive_int, metavar="N", help="Ray actors (default: cluster CPUs / cpus-per-worker)")
    p.add_argument("--cpus-per-worker", type=positive_int, metavar="N", help="CPUs per Ray actor (default 1)")
    p.add_argument("--shard-size", type=positive_int, default=DEFAULT_SHARD_SIZE, metavar="N",
                   help=f"inputs per output file, the unit of resumption (default {DEFAULT_SHARD_SIZE})")
    p.add_argument("--restart", action="store_true", help="delete another job's results in DIR and start over")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..batch import run_batch

    # Ray's actors run elsewhere: they check the device on their own machines.
    engine = engine_choice(args, batch_size=args.batch_size, local=args.runner == "local")
    summary = run_batch(args.inputs, args.output, model=args.model, weights=args.weights, engine=engine,
                        top=args.top, batch_size=args.batch_size, runner=args.runner, decode=args.decode,
                        shard_size=args.shard_size, ray_address=args.ray_address, workers=args.workers,
                        cpus_per_worker=args.cpus_per_worker, restart=args.restart,
                        progress=TerminalProgress(leave=True))
    failed = summary.failed + summary.skipped_failed
    line = (f"effnet: {summary.output}: classified {summary.classified}, failed {summary.failed}, "
            f"skipped {summary.skipped} (already done{f', {summary.skipped_failed} of them failed' if summary.skipped_failed else ''}); "
            f"{summary.total} inputs, {failed} without an answer")
    if len(summary.nodes) > 1:
        line += "; per node: " + ", ".join(f"{n[:12]} {c}" for n, c in sorted(summary.nodes.items()))
    print(line, file=sys.stderr, flush=True)
    return summary.exit_status
