"""The `effnet` command: parses arguments, calls the API, prints. Each subcommand is a module with an
`add(subparsers)` that registers its options and sets `run`. User mistakes print one line (no
traceback) and exit 1; usage errors exit 2 (argparse's convention).
"""
from __future__ import annotations

import argparse
import sys

from ..errors import EffnetError
from . import bench, classify, evaluation, export, info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effnet", description="EfficientNet-B7 (OMZ efficientnet-b7-pytorch) and family.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (classify.add, info.add_info, info.add_download, evaluation.add, bench.add, export.add):
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
