"""`effnet bench`: throughput and latency percentiles, engine-only or end to end."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ..engines import HINTS
from .options import (
    before_engine,
    decode_option,
    emit,
    engine_choice,
    engine_options,
    model_option,
    positive_float,
    positive_int,
    weights_option,
)

if TYPE_CHECKING:
    from ..bench import BenchResult

PERCENTILES = (50, 90, 99)


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput and latency percentiles, engine-only or end to end",
                       description="Benchmark a model: engine-only on random crops, or end to end from the image "
                                   "files in --images (decode, preprocess, infer, top-k), cycling over the folder.")
    model_option(p)
    weights_option(p)
    engine_options(p)
    decode_option(p)
    p.add_argument("--batch", type=positive_int, default=None, metavar="N",
                   help="images per backend call (default 8 on CPUs, 64 on GPUs)")
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
    from ..bench import bench
    from ..files import folder_images
    from ..resolved import resolve

    files = folder_images(args.images, "images") if args.images is not None else None
    engine = engine_choice(args, batch_size=args.batch, streams=args.streams, hint=args.hint, threads=args.threads)
    before_engine(args.model, args.weights, engine)
    result = bench(resolve(args.model, args.weights), engine, batch=args.batch, seconds=args.seconds, files=files,
                   decode=args.decode, decode_workers=args.decode_workers)
    emit(json.dumps(result.to_dict(), indent=2) if args.json else format_report(result))
    return 0


def _ms(lat: dict[str, float]) -> str:
    return "  ".join(f"p{p} {lat[f'p{p}']:.1f} ms" for p in PERCENTILES)


def format_report(r: BenchResult) -> str:
    """The human-readable report `effnet bench` prints."""
    what = ("engine-only (random uint8 crops)" if r.mode == "engine"
            else f"end to end ({r.files} files, decode + preprocess + infer + top-k)")
    e = r.engine
    where = r.device + (f" ({e['gpu']})" if "gpu" in e else "")
    lines = [f"effnet bench: {r.model} (weights {r.weights_id}), {r.backend} {r.precision} on {where}, {what}",
             f"  throughput  {r.throughput_ips:.3f} img/s  ({r.images} images in {r.seconds:.1f} s)"]
    if r.mode == "engine":
        lines.append(f"  latency     {_ms(r.latency_ms)}  "
                     f"(per batch of {r.batch} images, handed to the engine -> result)")
    else:
        lines.append(f"  latency     {_ms(r.latency_ms)}  (per image, file handed over -> prediction)")
        if r.infer_latency_ms:
            lines.append(f"  inference   {_ms(r.infer_latency_ms)}  "
                         f"(per batch of up to {r.batch} images, handed to the engine -> result)")
        if r.failed:
            lines.append(f"  unreadable  {len(r.errors)} file(s), {r.failed} failed attempts:")
            lines.extend(f"    {msg}" for msg in r.errors.values())
    parts = [f"hint {e['hint']}" if "hint" in e else None,
             f"{e['streams']} stream(s)" if "streams" in e else None,
             f"{e['threads']} thread(s)" if "threads" in e else None,
             f"{e['infer_requests']} infer requests" if "infer_requests" in e else None,
             f"request batch {e['request_batch']}" if "request_batch" in e else None,
             f"computes in {e['inference_precision']}" if "inference_precision" in e else None,
             ("compiled, batch sizes " + "/".join(map(str, e["batch_sizes"]))) if e.get("batch_sizes") else
             ("compiled" if e.get("compiled") else None),
             f"{r.decode} decoding in {r.decode_workers} threads" if r.decode_workers else None]
    lines.append(f"  engine      {', '.join(p for p in parts if p)}")
    m = r.machine
    lines.append(f"  machine     {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib', '?')} GiB; "
                 f"{' '.join(m.get('isa', [])) or 'no AVX-512'}")
    lines.append("  versions    " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
                 + f", python {m.get('python')}")
    busy = r.load_before is not None and r.load_before > 0.5
    share = f"this process used {100 * r.cpu_share:.0f}% of the CPU" if r.cpu_share is not None else ""
    lines.append(f"  noise       load average {r.load_before} before, {r.load_after} after; {share}"
                 + ("  (other work was running: numbers are noisy)" if busy else ""))
    return "\n".join(lines)


