"""The `effnet` command: parses arguments, calls the API, prints. Each subcommand is an
`_add_<name>(subparsers)` that registers its options and sets `run`. User mistakes print one line
(no traceback) and exit 1; usage errors exit 2 (argparse's convention).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from .arch import DEFAULT_MODEL, list_models
from .errors import EffnetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=list_models(), metavar="NAME",
                        help=f"one of {', '.join(list_models())} (default: {DEFAULT_MODEL})")


def _weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default="imagenet", metavar="imagenet|PATH",
                        help="'imagenet' (official file, downloaded and verified once) or a .pth/.safetensors path")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _progress(items: Iterator, total: int, unit: str):
    """A progress bar on a terminal when there is enough work to watch; silent otherwise."""
    if total < 10 or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, unit=unit, file=sys.stderr)


# ---- classify ---------------------------------------------------------------------------------

def expand_paths(paths: list[str]) -> list[str]:
    """Files as given; directories become their image files, sorted (recursively)."""
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(str(f) for f in sorted(path.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def _add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify images (files or folders)",
                       description="Classify images with an ImageNet-1k EfficientNet (B7, the card's model, by default).")
    _model_option(p)
    _weights_option(p)
    p.add_argument("--top", type=_positive_int, default=5, metavar="K", help="predictions per image (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="N")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    p.set_defaults(run=_run_classify)


def _run_classify(args: argparse.Namespace) -> int:
    from .classifier import Classifier

    files = expand_paths(args.paths)
    if not files:
        raise EffnetError(f"no images found in {' '.join(args.paths)}")
    classifier = Classifier(args.model, args.weights, batch_size=args.batch_size)
    failed = 0
    for outcome in _progress(classifier.classify_iter(files, top=args.top), len(files), "img"):
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


# ---- main -------------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_classify]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effnet", description="EfficientNet-B7 (OMZ efficientnet-b7-pytorch) and family.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except EffnetError as exc:
        print(f"effnet: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("effnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
