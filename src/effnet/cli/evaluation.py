"""`effnet eval`: the card's accuracy table on labelled images."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import EffnetError
from .options import comma_list, model_option, positive_int, weights_option


def add(sub: argparse._SubParsersAction) -> None:
    from ..backends import ALL_PRECISIONS, KINDS

    p = sub.add_parser("eval", help="top-1/top-5 accuracy on ImageNet-style data (the card's table)",
                       description="Top-1/top-5 accuracy with 95 % Wilson intervals, one column per backend x "
                                   "precision, beside the card's values. DATA: an image folder with val.txt "
                                   "('<relative path> <class index>' lines), WordNet-ID sub-folders, or "
                                   "LOC_val_solution.csv. Interrupted runs continue where they stopped.")
    model_option(p)
    weights_option(p)
    p.add_argument("--backend", type=comma_list(KINDS), default=["torch"], metavar="B[,B..]",
                   help=f"{', '.join(KINDS)}; the first is the reference (default torch)")
    p.add_argument("--precision", type=comma_list(ALL_PRECISIONS), default=["fp32"], metavar="P[,P..]",
                   help=f"{', '.join(ALL_PRECISIONS)}; pairs no engine runs are skipped (default fp32)")
    p.add_argument("--annotations", metavar="FILE", help="val.txt-style or LOC CSV labels for the images in DATA")
    p.add_argument("--limit", type=positive_int, metavar="N", help="a deterministic, class-stratified subset")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N")
    p.add_argument("--calibration", metavar="DIR", help="images to quantise int8 models with")
    p.add_argument("--resume-dir", metavar="DIR", help="where per-image results are kept (default: effnet's cache)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--report", metavar="FILE", help="also write the table as Markdown")
    p.add_argument("data", metavar="DATA", help="the labelled validation images")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate import configurations, evaluate

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
