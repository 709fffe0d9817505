"""`effnet serve`: the model as an Open Inference Protocol server (HTTP + gRPC) with a page at /."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..arch import list_models
from ..errors import EffnetError
from .options import (
    decode_option,
    download_notice,
    engine_choice,
    engine_options,
    positive_float,
    positive_int,
    weights_option,
)


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535 (0: any free port), got {value}")
    return value


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve models over HTTP and gRPC (KServe v2 / Triton clients, a web page)",
                       description="Serve models with the Open Inference Protocol (KServe v2) over HTTP and gRPC, "
                                   "with Triton's binary-data, classification and schedule-policy extensions, "
                                   "dynamic batching, a bounded queue, deadlines and a drain on SIGTERM. "
                                   "A page for people is at GET /, the API description at /docs.")
    p.add_argument("--model", nargs="+", default=None, choices=list_models(), metavar="NAME",
                   help="one or more models (default: efficientnet_b7)")
    weights_option(p)
    engine_options(p)
    decode_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--http-port", type=port, default=8000, help="HTTP port (default 8000; 0: any free port)")
    p.add_argument("--grpc-port", type=port, default=8001, help="gRPC port (default 8001; 0: any free port)")
    p.add_argument("--no-grpc", action="store_true", help="serve HTTP only")
    p.add_argument("--max-batch-size", type=positive_int, default=None, metavar="N",
                   help="images per engine call, and per request (default 8 on CPUs, 64 on GPUs)")
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0, metavar="MS",
                   help="how long a batch waits for requests still being decoded (default 2)")
    p.add_argument("--max-queue-size", type=positive_int, default=64, metavar="N",
                   help="requests admitted and not yet answered, per model; more are answered 503 (default 64)")
    p.add_argument("--request-timeout-ms", type=positive_float, default=None, metavar="MS",
                   help="deadline of every request (default none; a request's own `timeout` or gRPC deadline "
                        "applies when sooner)")
    p.add_argument("--max-request-bytes", type=positive_int, default=64 << 20, metavar="N",
                   help="largest request body, also after decompression (default 64 MiB)")
    p.add_argument("--max-pixels", type=positive_int, default=50_000_000, metavar="N",
                   help="images whose header claims more pixels are refused undecoded (default 50 MP, below the "
                        "about 179 MP classify accepts: a server decodes several untrusted images at once)")
    p.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                   help="require 'Authorization: Bearer <token>' (the file's first line) on all but health "
                        "and metrics")
    p.add_argument("--cors-origin", nargs="+", default=[], metavar="ORIGIN",
                   help="browser origins allowed to call the API (default: none)")
    p.add_argument("--drain-timeout", type=positive_float, default=30.0, metavar="S",
                   help="on SIGTERM, how long to finish accepted requests; those unanswered then get 503 and the "
                        "server exits (default 30; a second SIGTERM or SIGINT exits at once)")
    p.add_argument("--decode-workers", type=positive_int, default=2, metavar="N",
                   help="threads decoding images while the engine runs (default 2)")
    p.add_argument("--header-timeout", type=positive_float, default=10.0, metavar="S",
                   help="close an HTTP connection whose request line and headers have not arrived S seconds after "
                        "it opened (or after its previous answer), or whose body pauses longer (default 10)")
    p.add_argument("--keep-alive-timeout", type=positive_float, default=5.0, metavar="S",
                   help="close an idle keep-alive HTTP connection after S seconds (default 5)")
    p.add_argument("--max-connections", type=positive_int, default=None, metavar="N",
                   help="HTTP connections open at once; at the cap the one idle longest makes room, and when all "
                        "have requests in progress new ones get 503 (default and most: what the open-file limit, "
                        "ulimit -n, leaves room for)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..arch import DEFAULT_MODEL
    from ..classifier import Classifier
    from ..serve import ServeOptions, serve

    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text("utf-8").splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise EffnetError(f"cannot read a token from {args.token_file}: {exc or 'empty file'}") from None
        if not token:
            raise EffnetError(f"{args.token_file} holds an empty token")
    models = args.model or [DEFAULT_MODEL]
    # The scheduler's batches are 1..max_batch_size images: a GPU engine records both ends of that range.
    engine = engine_choice(args, batch_size=args.max_batch_size)
    classifiers = []
    for name in dict.fromkeys(models):
        download_notice(name, args.weights)
        classifiers.append(Classifier(name, args.weights, backend=engine, batch_size=args.max_batch_size,
                                      max_pixels=args.max_pixels, decode=args.decode))
    options = ServeOptions(host=args.host, http_port=args.http_port,
                           grpc_port=None if args.no_grpc else args.grpc_port,
                           max_batch_size=args.max_batch_size or engine.batch_size,
                           max_queue_delay_ms=args.max_queue_delay_ms,
                           max_queue_size=args.max_queue_size, request_timeout_ms=args.request_timeout_ms,
                           max_request_bytes=args.max_request_bytes, token=token, cors_origins=args.cors_origin,
                           drain_timeout=args.drain_timeout, decode_workers=args.decode_workers,
                           header_timeout=args.header_timeout, keep_alive_timeout=args.keep_alive_timeout,
                           max_connections=args.max_connections)
    return serve(classifiers, options)
