"""The one ONNX -> IR (-> int8) builder, used by `effnet export` and by the export cache alike."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..resolved import ResolvedModel
from .metadata import describe
from .onnx import export_onnx
from .openvino import convert_onnx
from .quantize import DEFAULT_SUBSET, asymmetric_activations, load_crops, quantize_int8

if TYPE_CHECKING:
    import openvino as ov


def ir_from_onnx(resolved: ResolvedModel, onnx_path: str | os.PathLike[str], precision: str = "fp32", *,
                 calibration_files: Sequence[Path] = (), subset_size: int = DEFAULT_SUBSET,
                 log: Callable[[str], None] = lambda _: None) -> ov.Model:
    """The card's IR (BGR raw input, mean/scale folded in) from the card's ONNX file; int8 is
    quantised with NNCF on `calibration_files`. fp16 is a storage choice made when saving."""
    ir = convert_onnx(onnx_path, resolved.preprocess, describe(resolved, color="BGR", folded=True))
    if precision == "int8":
        log(f"decoding {len(calibration_files)} calibration images")
        crops = load_crops(calibration_files, resolved.preprocess, desc="calibration images")
        log(f"quantizing with NNCF on {len(crops)} images")
        ir = quantize_int8(ir, crops, subset_size=subset_size,
                           asymmetric_activations=asymmetric_activations(resolved.spec))
    return ir


def build_ir(resolved: ResolvedModel, precision: str = "fp32", *, batch: int | None = 1,
             calibration_files: Sequence[Path] = (), subset_size: int = DEFAULT_SUBSET,
             log: Callable[[str], None] = lambda _: None) -> ov.Model:
    """The card's IR straight from the weights (through a temporary ONNX file, as the OMZ converts)."""
    model = resolved.create_model(input_size=resolved.input_size)
    with tempfile.TemporaryDirectory(prefix="effnet-onnx-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, onnx_path, batch=batch)
        return ir_from_onnx(resolved, onnx_path, precision, calibration_files=calibration_files,
                            subset_size=subset_size, log=log)
