"""The one ONNX -> IR (-> int8) builder, used by `effnet export` and by the export cache alike."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..calibration import CalibrationSet
from ..errors import EngineError
from ..model import EfficientNet
from ..resolved import ResolvedModel
from .metadata import describe
from .onnx import export_onnx
from .openvino import convert_onnx
from .quantize import asymmetric_activations, load_crops, quantize_int8

if TYPE_CHECKING:
    import openvino as ov

log = logging.getLogger(__name__)


def ir_from_onnx(resolved: ResolvedModel, onnx_path: str | os.PathLike[str], precision: str = "fp32", *,
                 calibration: CalibrationSet | None = None) -> ov.Model:
    """The card's IR (BGR raw input, mean/scale folded in) from the card's ONNX file; int8 is
    quantised with NNCF on `calibration`'s photos. fp16 is a storage choice made when saving."""
    ir = convert_onnx(onnx_path, resolved.preprocess, describe(resolved, color="BGR", folded=True))
    if precision == "int8":
        if calibration is None:
            raise EngineError("precision=int8 needs calibration=DIR: a folder of a few hundred representative "
                              "photos", params=("precision", "calibration"))
        files, _ = calibration.split()
        log.info("decoding %d calibration images", len(files))
        crops = load_crops(files, resolved.preprocess, desc="calibration images")
        log.info("quantizing with NNCF on %d images", len(crops))
        ir = quantize_int8(ir, crops, subset_size=calibration.subset_size,
                           asymmetric_activations=asymmetric_activations(resolved.spec))
    return ir


def build_ir(resolved: ResolvedModel, precision: str = "fp32", *, batch: int | None = 1,
             calibration: CalibrationSet | None = None, network: EfficientNet | None = None) -> ov.Model:
    """The card's IR straight from the weights (through a temporary ONNX file, as the OMZ converts);
    `network`: `resolved`'s model at its input size, where the caller has created it already."""
    model = network if network is not None else resolved.create_model(input_size=resolved.input_size)
    with tempfile.TemporaryDirectory(prefix="effnet-onnx-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, onnx_path, batch=batch)
        return ir_from_onnx(resolved, onnx_path, precision, calibration=calibration)
