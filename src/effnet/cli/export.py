"""`effnet export`: the card's ONNX and OpenVINO IR files, verified against PyTorch."""
from __future__ import annotations

import argparse

from ..errors import RequestError
from .options import (
    comma_list,
    download_notice,
    emit,
    int8_max_drop_option,
    max_drop_needs_calibration,
    model_option,
    positive_int,
    usage_mistakes,
    weights_option,
    writable_folder,
)


def add(sub: argparse._SubParsersAction) -> None:
    from ..engines import FILE_PRECISIONS
    from ..export import FORMATS

    p = sub.add_parser("export", help="write the card's ONNX and/or OpenVINO IR (fp32, fp16, int8), verified",
                       description="ONNX: the card's original model (input 'data' normalised RGB, output 'prob'). "
                                   "OpenVINO IR: the card's converted model (input 'data' raw 0-255 BGR, mean and "
                                   "scale folded in). Each file is checked against PyTorch after it is written.")
    model_option(p)
    weights_option(p)
    p.add_argument("--format", type=comma_list(FORMATS), required=True, metavar="F[,F..]",
                   help=f"{', '.join(FORMATS)}")
    p.add_argument("--precision", choices=FILE_PRECISIONS, default="fp32",
                   help="the IR's: fp32 (default), fp16 weights, or int8 (NNCF, needs --calibration); ONNX is fp32")
    p.add_argument("--batch", default="1", choices=("1", "dynamic"), help="batch axis: 1 (the card's) or dynamic")
    p.add_argument("--calibration", metavar="DIR",
                   help="photos for int8 calibration (every fifth is kept back to measure agreement)")
    p.add_argument("--calibration-size", type=positive_int, default=300, metavar="N",
                   help="images used to calibrate (default 300)")
    int8_max_drop_option(p)
    p.add_argument("--output", required=True, metavar="DIR", help="where the files are written")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="compare with PyTorch after writing, on real photos; fp32 probabilities must match "
                        "within 1e-4 (absolute) (default on)")
    p.add_argument("--images", metavar="DIR",
                   help="more photos to verify on, besides the bundled example and held-out calibration photos")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..calibration import calibration_set
    from ..export import check_request, export_model
    from ..resolved import resolve

    max_drop_needs_calibration(args)
    output = writable_folder(args.output, "output")  # before minutes of export, not after
    calibration = (calibration_set(args.calibration, args.calibration_size, max_drop=args.int8_max_drop)
                   if args.calibration else None)
    # Before the weights are read (or B7's downloaded): an impossible request, or a missing package.
    with usage_mistakes(RequestError):
        check_request(args.format, args.precision, calibration, verify=args.verify)
    download_notice(args.model, args.weights)
    results = export_model(resolve(args.model, args.weights), output=output, formats=args.format,
                           precision=args.precision, batch=None if args.batch == "dynamic" else 1,
                           calibration=calibration, verify=args.verify, images=args.images)
    for result in results:
        emit(f"{result.format} {result.precision}: {result.path}")
        if result.parity is not None:
            emit(f"  vs PyTorch fp32 on {result.parity}")
            if result.precision == "int8" and result.parity.top1 < 0.995:
                emit("  (below the 99.5 % top-1 target: calibrate on more, and more typical, photos, or add "
                     "--int8-max-drop 0.005 to keep the layers that move answers in float)")
    return 0
