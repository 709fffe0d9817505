"""Options and helpers every `effnet` subcommand shares."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator

from ..arch import DEFAULT_MODEL, list_models


def model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=list_models(), metavar="NAME",
                        help=f"one of {', '.join(list_models())} (default: {DEFAULT_MODEL})")


def weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default="imagenet", metavar="imagenet|random|PATH",
                        help="'imagenet' (the official file, downloaded and verified once), 'random' (untrained, "
                             "for speed tests) or a .pth/.safetensors file (default: imagenet)")


def engine_options(parser: argparse.ArgumentParser) -> None:
    from ..engines import ALL_PRECISIONS, KINDS

    parser.add_argument("--backend", choices=KINDS, default="auto",
                        help="inference engine (default auto: the fastest installed, OpenVINO with effnet[openvino])")
    parser.add_argument("--precision", choices=ALL_PRECISIONS, default=None,
                        help="fp32; bf16 (torch, openvino); fp16, int8 (openvino; int8 needs --calibration); "
                             "default: the engine's own, bf16 on OpenVINO where the CPU has it, else fp32")
    parser.add_argument("--calibration", metavar="DIR", help="images to quantise an int8 model with")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def comma_list(choices: list[str] | tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items or any(item not in choices for item in items):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}; got {text!r}")
        return items
    return parse


def notice(line: str) -> None:
    """One line to stderr before long work, so a person knows why nothing else is happening yet."""
    print(f"effnet: {line}", file=sys.stderr, flush=True)


def progress(items: Iterator, total: int, unit: str):
    """A progress bar on a terminal when there is enough work to watch; silent otherwise."""
    if total < 10 or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, unit=unit, file=sys.stderr)
