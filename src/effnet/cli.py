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
    from .preprocess import image_files

    out: list[str] = []
    for p in paths:
        out.extend(map(str, image_files(p)) if Path(p).is_dir() else [p])
    return out


def _add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify images (files or folders)",
                       description="Classify images with an ImageNet-1k EfficientNet (B7, the card's model, by default).")
    _model_option(p)
    _weights_option(p)
    p.add_argument("--top", type=_positive_int, default=5, metavar="K", help="predictions per image (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="N")
    _engine_options(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    p.set_defaults(run=_run_classify)


def _engine_options(parser: argparse.ArgumentParser) -> None:
    from .backends import ALL_PRECISIONS, KINDS

    parser.add_argument("--backend", choices=KINDS, default="auto",
                        help="inference engine (default auto: the fastest installed, OpenVINO with effnet[openvino])")
    parser.add_argument("--precision", choices=ALL_PRECISIONS, default=None,
                        help="fp32; bf16 (torch, openvino); fp16, int8 (openvino; int8 needs --calibration); "
                             "default: the engine's own, bf16 on OpenVINO where the CPU has it, else fp32")
    parser.add_argument("--calibration", metavar="DIR", help="images to quantise an int8 model with")


def _run_classify(args: argparse.Namespace) -> int:
    from .classifier import Classifier

    files = expand_paths(args.paths)
    if not files:
        raise EffnetError(f"no images found in {' '.join(args.paths)}")
    classifier = Classifier(args.model, args.weights, backend=args.backend, precision=args.precision,
                            calibration=args.calibration, batch_size=args.batch_size)
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


# ---- eval -------------------------------------------------------------------------------------

def _comma_list(choices: list[str] | tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items or any(item not in choices for item in items):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}; got {text!r}")
        return items
    return parse


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from .backends import ALL_PRECISIONS, KINDS

    p = sub.add_parser("eval", help="top-1/top-5 accuracy on ImageNet-style data (the card's table)",
                       description="Top-1/top-5 accuracy with 95 % Wilson intervals, one column per backend x "
                                   "precision, beside the card's values. DATA: an image folder with val.txt "
                                   "('<relative path> <class index>' lines), WordNet-ID sub-folders, or "
                                   "LOC_val_solution.csv. Interrupted runs continue where they stopped.")
    _model_option(p)
    _weights_option(p)
    p.add_argument("--backend", type=_comma_list(KINDS), default=["torch"], metavar="B[,B..]",
                   help=f"{', '.join(KINDS)}; the first is the reference (default torch)")
    p.add_argument("--precision", type=_comma_list(ALL_PRECISIONS), default=["fp32"], metavar="P[,P..]",
                   help=f"{', '.join(ALL_PRECISIONS)}; pairs no engine runs are skipped (default fp32)")
    p.add_argument("--annotations", metavar="FILE", help="val.txt-style or LOC CSV labels for the images in DATA")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="a deterministic, class-stratified subset")
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="N")
    p.add_argument("--calibration", metavar="DIR", help="images to quantise int8 models with")
    p.add_argument("--resume-dir", metavar="DIR", help="where per-image results are kept (default: effnet's cache)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--report", metavar="FILE", help="also write the table as Markdown")
    p.add_argument("data", metavar="DATA", help="the labelled validation images")
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from .evaluate import configurations, evaluate

    result = evaluate(args.data, model=args.model, weights=args.weights,
                      configurations=configurations(args.backend, args.precision), annotations=args.annotations,
                      limit=args.limit, batch_size=args.batch_size, calibration=args.calibration,
                      resume_dir=args.resume_dir)
    if args.report:
        try:
            Path(args.report).write_text(result.to_markdown(), encoding="utf-8")
        except OSError as exc:
            raise EffnetError(f"cannot write the report {args.report}: {exc.strerror or exc}") from exc
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.to_markdown(max_failed=20), end="")
    return 0


# ---- bench ------------------------------------------------------------------------------------

def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput and latency percentiles, engine-only or end to end",
                       description="Benchmark a model: engine-only on random crops, or end to end from the image "
                                   "files in --images (decode, preprocess, infer, top-k), cycling over the folder.")
    _model_option(p)
    p.add_argument("--weights", default="imagenet", metavar="imagenet|random|PATH",
                   help="'imagenet' (official file), a .pth/.safetensors path, or 'random' (speed only, offline)")
    _engine_options(p)
    p.add_argument("--batch", type=_positive_int, default=8, metavar="N", help="images per backend call (default 8)")
    p.add_argument("--streams", type=_positive_int, default=None, metavar="N",
                   help="OpenVINO CPU streams (default: what the hint picks)")
    p.add_argument("--hint", choices=("THROUGHPUT", "LATENCY"), default="THROUGHPUT", help="OpenVINO performance hint")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N", help="inference threads in all")
    p.add_argument("--seconds", type=_positive_float, default=20.0, metavar="S", help="measured time (default 20)")
    p.add_argument("--images", metavar="DIR", help="end to end from the image files in DIR instead of random crops")
    p.add_argument("--decode-workers", type=_positive_int, default=None, metavar="N", help="decode threads (--images)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from .bench import bench, format_report

    result = bench(args.model, None if args.weights == "random" else args.weights, backend=args.backend,
                   precision=args.precision, batch=args.batch, streams=args.streams, hint=args.hint,
                   threads=args.threads, seconds=args.seconds, images=args.images, decode_workers=args.decode_workers,
                   calibration=args.calibration)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_report(result))
    return 0


# ---- export -----------------------------------------------------------------------------------

def _add_export(sub: argparse._SubParsersAction) -> None:
    from .export import FORMATS, PRECISIONS

    p = sub.add_parser("export", help="write the card's ONNX and/or OpenVINO IR (fp32, fp16, int8), verified",
                       description="ONNX: the card's original model (input 'data' normalised RGB, output 'prob'). "
                                   "OpenVINO IR: the card's converted model (input 'data' raw 0-255 BGR, mean and "
                                   "scale folded in). Each file is checked against PyTorch after it is written.")
    _model_option(p)
    _weights_option(p)
    p.add_argument("--format", type=_comma_list(FORMATS), required=True, metavar="F[,F..]",
                   help=f"{', '.join(FORMATS)}")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="the IR's: fp32 (default), fp16 weights, or int8 (NNCF, needs --calibration); ONNX is fp32")
    p.add_argument("--batch", default="1", choices=("1", "dynamic"), help="batch axis: 1 (the card's) or dynamic")
    p.add_argument("--calibration", metavar="DIR",
                   help="photos for int8 calibration (every fifth is kept back to measure agreement)")
    p.add_argument("--calibration-size", type=_positive_int, default=300, metavar="N",
                   help="images used to calibrate (default 300)")
    p.add_argument("--output", required=True, metavar="DIR", help="where the files are written")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="compare with PyTorch after writing; fp32 must match within 1e-4 (default on)")
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .export import export_model

    results = export_model(args.model, args.weights, output=args.output, formats=args.format,
                           precision=args.precision, batch=None if args.batch == "dynamic" else 1,
                           calibration=args.calibration, subset_size=args.calibration_size, verify=args.verify,
                           log=lambda line: print(f"effnet: {line}", file=sys.stderr, flush=True))
    for result in results:
        print(f"{result.format} {result.precision}: {result.path}")
        if result.agreement is not None:
            print(f"  vs PyTorch fp32 on {result.agreement}")
            if result.precision == "int8" and result.agreement.top1 < 0.995:
                print("  (below the 99.5 % top-1 target: calibrate on more, and more typical, photos)")
    return 0


# ---- main -------------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_classify, _add_info, _add_download, _add_eval, _add_bench,
                                                                    _add_export]


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
