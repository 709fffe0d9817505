"""`effnet bench`: throughput and latency percentiles, engine-only or end to end."""
from __future__ import annotations

import argparse
import json

from ..engines import HINTS
from .options import (
    before_engine,
    emit,
    engine_options,
    model_option,
    notice,
    positive_float,
    positive_int,
    weights_option,
)


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput and latency percentiles, engine-only or end to end",
                       description="Benchmark a model: engine-only on random crops, or end to end from the image "
                                   "files in --images (decode, preprocess, infer, top-k), cycling over the folder.")
    model_option(p)
    weights_option(p)
    engine_options(p)
    p.add_argument("--batch", type=positive_int, default=8, metavar="N", help="images per backend call (default 8)")
    p.add_argument("--streams", type=positive_int, default=None, metavar="N",
                   help="OpenVINO CPU streams (default: what the hint picks)")
    p.add_argument("--hint", choices=HINTS, default="THROUGHPUT", help="OpenVINO performance hint")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N", help="inference threads in all")
    p.add_argument("--seconds", type=positive_float, default=20.0, metavar="S", help="measured time (default 20)")
    p.add_argument("--images", metavar="DIR", help="end to end from the image files in DIR instead of random crops")
    p.add_argument("--decode-workers", type=positive_int, default=None, metavar="N", help="decode threads (--images)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import bench, format_report

    before_engine(args.model, args.weights, args.backend, args.precision)
    result = bench(args.model, args.weights, backend=args.backend,
                   precision=args.precision, batch=args.batch, streams=args.streams, hint=args.hint,
                   threads=args.threads, seconds=args.seconds, images=args.images, decode_workers=args.decode_workers,
                   calibration=args.calibration, log=notice)
    emit(json.dumps(result.to_dict(), indent=2) if args.json else format_report(result))
    return 0

