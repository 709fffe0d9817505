"""`effnet batch`: many images -> a Parquet dataset, resumable and exactly once, locally or on Ray."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

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
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="Ray actors (default: cluster CPUs / cpus-per-worker; with --device cuda, cluster GPUs)")
    p.add_argument("--cpus-per-worker", type=positive_int, metavar="N", help="CPUs per Ray actor (default 1)")
    p.add_argument("--shard-size", type=positive_int, default=DEFAULT_SHARD_SIZE, metavar="N",
                   help=f"inputs per output file, the unit of resumption (default {DEFAULT_SHARD_SIZE})")
    p.add_argument("--restart", action="store_true", help="delete another job's results in DIR and start over")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..batch import run_batch

    # Ray's actors run elsewhere: they check the device on their own machines.
    engine = engine_choice(args, batch_size=args.batch_size, local=args.runner == "local")
    with ray_output_aside() if args.runner == "ray" else nullcontext():
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


@contextmanager
def ray_output_aside() -> Iterator[Path | None]:
    """Ray's own output in this process goes to a log file, effnet's stays on the terminal. Ray's C++ core
    writes to file descriptor 2 whatever its settings (an error line on every actor pool, the 20 s of retries
    of a refused connection), so descriptor 2 becomes the file and sys.stderr a copy of the terminal; Ray's
    Python loggers, which write to sys.stderr, are pointed at the file too. The file is
    $TMPDIR/effnet-ray-<pid>.log, removed when the command returns, kept when it fails."""
    try:
        import ray.data  # noqa: F401  (Ray sets up its loggers on import: before they are pointed at the file)
    except ImportError:  # no Ray: nothing of Ray's to set aside (run_batch says what to install)
        yield None
        return
    path = Path(tempfile.gettempdir()) / f"effnet-ray-{os.getpid()}.log"
    log = open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
    sys.stderr.flush()
    terminal, previous = os.dup(2), sys.stderr
    os.dup2(log.fileno(), 2)
    sys.stderr = open(terminal, "w", buffering=1, encoding=previous.encoding or "utf-8",
                      errors="backslashreplace")
    to_file = logging.StreamHandler(log)
    moved = []
    for name in ("ray", "ray.data"):  # ray.data does not propagate to ray
        logger = logging.getLogger(name)
        consoles = [h for h in logger.handlers
                    if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
        for handler in consoles:
            logger.removeHandler(handler)
        logger.addHandler(to_file)
        moved.append((logger, consoles))
    returned = False
    try:
        yield path
        returned = True
    finally:
        for logger, consoles in moved:
            logger.removeHandler(to_file)
            for handler in consoles:
                logger.addHandler(handler)
        sys.stderr.flush()
        os.dup2(terminal, 2)
        sys.stderr.close()
        sys.stderr = previous
        log.close()
        if returned:
            path.unlink(missing_ok=True)
