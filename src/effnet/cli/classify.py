"""`effnet classify`: files and folders in, top-k predictions out (text or JSON lines)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import EffnetError
from .options import engine_options, model_option, notice, positive_int, progress, weights_option


def expand_paths(paths: list[str]) -> list[str]:
    """Files as given; directories become their image files, sorted (recursively)."""
    from ..preprocessing import image_files

    out: list[str] = []
    for p in paths:
        out.extend(map(str, image_files(p)) if Path(p).is_dir() else [p])
    return out


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify images (files or folders)",
                       description="Classify images with an ImageNet-1k EfficientNet (B7, the card's model, by default).")
    model_option(p)
    weights_option(p)
    p.add_argument("--top", type=positive_int, default=5, metavar="K", help="predictions per image (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N")
    engine_options(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..classifier import Classifier

    files = expand_paths(args.paths)
    if not files:
        raise EffnetError(f"no images found in {' '.join(args.paths)}")
    classifier = Classifier(args.model, args.weights, backend=args.backend, precision=args.precision,
                            calibration=args.calibration, batch_size=args.batch_size, log=notice)
    failed = 0
    for outcome in progress(classifier.classify_iter(files, top=args.top), len(files), "img"):
        if outcome.error is not None:
            failed += 1
            if args.json:
                print(json.dumps({"image": outcome.source, "error": outcome.error}), flush=True)
            else:
                print(f"effnet: {outcome.error}", file=sys.stderr, flush=True)
            continue
        if args.json:
            top = [{"index": p.index, "label": p.label, "prob": round(p.probability, 6)} for p in outcome.predictions]
            print(json.dumps({"image": outcome.source, "top": top}), flush=True)
        else:
            print(outcome.source)
            for rank, p in enumerate(outcome.predictions, 1):
                print(f"  {rank:>2}. {p.label:<32} {100 * p.probability:6.2f}%  (class {p.index})")
            sys.stdout.flush()
    if failed:
        print(f"effnet: {failed} of {len(files)} images could not be classified", file=sys.stderr)
    return 1 if failed else 0
