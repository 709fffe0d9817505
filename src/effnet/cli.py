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


# ---- info, download ---------------------------------------------------------------------------

def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="architecture, size, cost, input/output contract and weights of a model")
    _model_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(run=_run_info)


def model_info(name: str) -> dict:
    """Everything `effnet info` prints, as plain data."""
    from .arch import network_spec
    from .complexity import complexity
    from .weights import cached_file, weights_entry

    spec, entry = network_spec(name), weights_entry(name)
    cost, cfg = complexity(name, entry.preprocess.input_size), entry.preprocess
    cached = cached_file(entry)
    s = cfg.input_size
    return {
        "model": name,
        "family": spec.variant.family.name,
        "scaling": {"width": spec.variant.width, "depth": spec.variant.depth,
                    "resolution": spec.variant.resolution, "dropout": spec.variant.dropout},
        "stem_channels": spec.stem_channels,
        "stages": [{"block": st[0].kind.name.lower(), "repeats": len(st), "kernel": st[0].kernel,
                    "stride": st[0].stride, "expansion": st[0].expansion, "channels": st[0].out_channels,
                    "squeeze_excite": st[0].se_channels > 0} for st in spec.stages],
        "blocks": len(spec.blocks),
        "head_channels": spec.head_channels,
        "activation": spec.activation.value,
        "parameters": cost.params,
        "parameters_bn_folded": cost.params_folded,
        "gflops": round(cost.gflops, 3),
        "input": {"name": "data", "shape": [1, 3, s, s], "order": "RGB", "mean": list(cfg.mean),
                  "std": list(cfg.std), "resize": cfg.resize_size, "crop": s,
                  "interpolation": cfg.interpolation.value},
        "output": {"name": "prob", "shape": [1, 1000], "meaning": "softmax probabilities over ImageNet-1k"},
        "weights": {"url": entry.url, "file": entry.filename, "sha256": entry.sha256,
                    "hash": entry.describe_hash(), "size": entry.size,
                    "cached": str(cached) if cached else None},
    }


def _run_info(args: argparse.Namespace) -> int:
    info = model_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    inp, out, w = info["input"], info["output"], info["weights"]
    print(f"{info['model']} ({info['family']}; width x{info['scaling']['width']}, depth x{info['scaling']['depth']}, "
          f"{info['activation']})")
    print(f"  stem {info['stem_channels']} -> {info['blocks']} blocks -> head {info['head_channels']} -> 1000")
    print("  stage  block    repeats  kernel  stride  channels  SE")
    for i, st in enumerate(info["stages"], 1):
        print(f"  {i:>5}  {'MBConv' + str(st['expansion']):<7}  {st['repeats']:>7}  {st['kernel']}x{st['kernel']:<4}  "
              f"{st['stride']:>6}  {st['channels']:>8}  {'yes' if st['squeeze_excite'] else 'no'}")
    print(f"  parameters      {info['parameters']:,} ({info['parameters_bn_folded']:,} with BatchNorm folded)")
    print(f"  GFLOPs          {info['gflops']:.3f} at {inp['crop']}x{inp['crop']}")
    print(f"  input  {inp['name']}  {'x'.join(map(str, inp['shape']))} {inp['order']}, resize {inp['resize']} "
          f"{inp['interpolation']}, centre crop {inp['crop']}, mean {inp['mean']}, std {inp['std']}")
    print(f"  output {out['name']}  {'x'.join(map(str, out['shape']))} {out['meaning']}")
    print(f"  weights {w['url']}")
    print(f"          {w['hash']}" + (f", {w['size']:,} bytes" if w["size"] else ""))
    print(f"          {'local copy ' + w['cached'] if w['cached'] else 'not downloaded yet (effnet download)'}")
    return 0


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download and verify a model's official weights into the cache")
    _model_option(p)
    p.set_defaults(run=_run_download)


def _run_download(args: argparse.Namespace) -> int:
    from .weights import download, weights_entry

    print(download(weights_entry(args.model), progress=True))
    return 0


# ---- main -------------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_classify, _add_info, _add_download]


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
