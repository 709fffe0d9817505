"""`effnet eval`: the card's accuracy table on labelled images."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import EngineError, OutputError
from .options import (
    TerminalProgress,
    calibration_choice,
    comma_list,
    download_notice,
    emit,
    int8_max_drop_option,
    model_option,
    positive_int,
    usage_mistakes,
    weights_option,
    writable_folder,
)


def add(sub: argparse._SubParsersAction) -> None:
    from ..engines import ALL_PRECISIONS, KINDS

    p = sub.add_parser("eval", help="top-1/top-5 accuracy on ImageNet-style data (the card's table)",
                       description="Top-1/top-5 accuracy with 95 % Wilson intervals, one column per backend x "
                                   "precision, beside the card's values. DATA: an image folder with val.txt "
                                   "('<relative path> <class index>' lines), WordNet-ID sub-folders, or "
                                   "LOC_val_solution.csv. Interrupted runs continue where they stopped. Each "
                                   "column keeps its own results, reused only for the same model, weights, "
                                   "engine, precision, device, int8 calibration and image content: adding or "
                                   "reordering columns runs only the columns that lack them.")
    model_option(p)
    weights_option(p)
    p.add_argument("--backend", type=comma_list(KINDS), default=["torch"], metavar="B[,B..]",
                   help=f"{', '.join(KINDS)}; the first is the reference (default torch)")
    p.add_argument("--precision", type=comma_list(ALL_PRECISIONS), default=["fp32"], metavar="P[,P..]",
                   help=f"{', '.join(ALL_PRECISIONS)}; pairs no engine runs are skipped (default fp32)")
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help="where every column runs (default auto: the first NVIDIA GPU when PyTorch sees one)")
    p.add_argument("--annotations", metavar="FILE", help="val.txt-style or LOC CSV labels for the images in DATA")
    p.add_argument("--limit", type=positive_int, metavar="N", help="a deterministic, class-stratified subset")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="images per engine call, decoded ahead in threads (default 8)")
    p.add_argument("--calibration", metavar="DIR", help="images to quantise int8 models with")
    int8_max_drop_option(p)
    p.add_argument("--resume-dir", metavar="DIR", help="where each column's per-image results are kept (default: effnet's cache; "
                        "where that cannot be written, memory only)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the Markdown table")
    p.add_argument("--report", metavar="FILE", help="also write the table as Markdown")
    p.add_argument("data", metavar="DATA", help="the labelled validation images")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..datasets import load_dataset
    from ..evaluate import eval_engines, evaluate

    # Mistakes that would otherwise surface after hours: engines (installed, precision), the folders written.
    with usage_mistakes(EngineError):
        engines = eval_engines(args.backend, args.precision, device=args.device, calibration=calibration_choice(args))
    resume_dir = writable_folder(args.resume_dir, "resume_dir") if args.resume_dir else None
    if args.report and not Path(args.report).expanduser().parent.is_dir():
        raise OutputError(f"cannot write the report {args.report}: its folder does not exist")
    dataset = load_dataset(args.data, args.annotations)  # a bad labels line fails before any download
    download_notice(args.model, args.weights)
    result = evaluate(dataset, model=args.model, weights=args.weights, engines=engines, limit=args.limit,
                      batch_size=args.batch_size, resume_dir=resume_dir, progress=TerminalProgress(leave=False))
    if args.report:
        try:
            Path(args.report).expanduser().write_text(result.to_markdown(), encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write the report {args.report}: {exc.strerror or exc}") from exc
    emit(json.dumps(result.to_dict(), indent=2) if args.json else result.to_markdown(max_failed=20).rstrip("\n"))
    return 0
