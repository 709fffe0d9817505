"""`effnet export`: build the model, write the card's ONNX and/or IR (fp32, fp16, int8), verify each."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engines import FILE_PRECISIONS as PRECISIONS
from ..errors import EffnetError
from ..resolved import ResolvedModel
from .build import ir_from_onnx
from .metadata import describe
from .onnx import export_onnx, run_onnx
from .openvino import bgr_nchw, run_ir, save_ir
from .quantize import DEFAULT_SUBSET, image_files, load_crops, split_holdout
from .verify import FP32_TOLERANCE, Agreement, compare, normalized_nchw, synthetic_crops, torch_probabilities

FORMATS = ("onnx", "openvino")
VERIFY_IMAGES = 8  # fp32/fp16 parity: a few images prove the graph; agreement statistics need more


class ParityError(EffnetError):
    """An exported fp32 model whose probabilities differ from PyTorch's by more than the tolerance."""


@dataclass(frozen=True)
class Exported:
    """One written file and, when verified, how it agrees with PyTorch fp32."""

    format: str
    precision: str
    path: Path
    agreement: Agreement | None = None


def check_request(formats: Sequence[str], precision: str, calibration: str | os.PathLike[str] | None) -> None:
    """Refuse impossible combinations before minutes of work."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise EffnetError(f"unknown format {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise EffnetError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision != "fp32" and "openvino" not in formats:
        raise EffnetError(f"ONNX export is fp32 (the card's original model); {precision} needs --format openvino")
    if precision == "int8" and calibration is None:
        raise EffnetError("int8 needs --calibration DIR: a folder of a few hundred representative photos")


def ir_filename(name: str, precision: str) -> str:
    return f"{name}.xml" if precision == "fp32" else f"{name}-{precision}.xml"


def export_model(resolved: ResolvedModel, *, output: str | os.PathLike[str], formats: Sequence[str] = ("onnx",), precision: str = "fp32", batch: int | None = 1,
                 calibration: str | os.PathLike[str] | None = None, subset_size: int = DEFAULT_SUBSET,
                 verify: bool = True, log: Callable[[str], None] = lambda _: None) -> list[Exported]:
    """Write `name` in each of `formats` under `output`; ONNX is always fp32, `precision` is the IR's.

    With `verify`, each file is run next to PyTorch: fp32 must match within 1e-4 (else ParityError),
    fp16 and int8 report their agreement. int8 is calibrated on `calibration`'s images, every fifth
    one kept back to measure agreement on images it did not see.
    """
    check_request(formats, precision, calibration)
    config, name = resolved.preprocess, resolved.name
    output = Path(output)
    log(f"building {name} (weights {resolved.weights_id}) at {config.input_size}x{config.input_size}")
    model = resolved.create_model(input_size=config.input_size)
    calib_files, held_files = (split_holdout(image_files(calibration), subset_size)
                               if calibration is not None else ([], []))
    samples, reference = None, None
    if verify:
        # int8 is judged on every held-out photo; fp32/fp16 parity needs only a few inputs.
        samples = (load_crops(held_files[:VERIFY_IMAGES if precision != "int8" else None], config,
                              desc="verification images") if held_files else synthetic_crops(config.input_size))
        log(f"running the PyTorch reference on {len(samples)} {'held-out' if held_files else 'synthetic'} images")
        reference = torch_probabilities(model, samples, config)
    results: list[Exported] = []
    with tempfile.TemporaryDirectory(prefix="effnet-export-") as tmp:
        onnx_path = output / f"{name}.onnx" if "onnx" in formats else Path(tmp) / f"{name}.onnx"
        log(f"exporting ONNX ({'dynamic' if batch is None else batch} batch)")
        export_onnx(model, onnx_path, batch=batch, metadata=describe(resolved, color="RGB", folded=False))
        if "onnx" in formats:
            agreement = None
            if reference is not None:
                agreement = _check(reference, run_onnx(onnx_path, normalized_nchw(samples, config)), "fp32", "onnx")
            results.append(Exported("onnx", "fp32", onnx_path, agreement))
        if "openvino" in formats:
            ir = ir_from_onnx(resolved, onnx_path, precision, calibration_files=calib_files,
                              subset_size=subset_size, log=log)
            xml = save_ir(ir, output / ir_filename(name, precision), precision)
            agreement = None
            if reference is not None:
                agreement = _check(reference, run_ir(xml, bgr_nchw(samples)), precision, "openvino")
            results.append(Exported("openvino", precision, xml, agreement))
    return results


def _check(reference: np.ndarray, probs: np.ndarray, precision: str, fmt: str) -> Agreement:
    agreement = compare(reference, probs)
    if precision == "fp32" and agreement.max_abs_diff > FP32_TOLERANCE:
        raise ParityError(f"{fmt} fp32 differs from PyTorch by {agreement.max_abs_diff:.2e} "
                          f"(> {FP32_TOLERANCE:g}) on {agreement.count} images; the export is wrong")
    return agreement

