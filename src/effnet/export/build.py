"""The one ONNX -> IR (-> int8) builder, used by `effnet export` and by the export cache alike."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..calibration import NEEDS_PHOTOS, CalibrationSet
from ..errors import EngineError
from ..model import EfficientNet
from ..resolved import ResolvedModel
from .metadata import SECTION, describe
from .onnx import export_onnx
from .openvino import convert_onnx
from .quantize import asymmetric_activations, float_layers_kept, load_crops, quantize_int8
from .verify import Parity

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
            raise EngineError(NEEDS_PHOTOS, params=("precision", "calibration"))
        files, held_files = calibration.split()
        log.info("decoding %d calibration and %d held-out images", len(files), len(held_files))
        crops = load_crops(files, resolved.preprocess, desc="calibration images")
        held_out = load_crops(held_files, resolved.preprocess, desc="held-out images") if held_files else None
        log.info("quantizing with NNCF on %d images%s", len(crops), "" if calibration.max_drop is None else
                 f", with accuracy control (top-1 agreement >= {1 - calibration.max_drop:.1%} on the held-out ones)")
        ir, quality = quantize_int8(ir, crops, held_out=held_out, max_drop=calibration.max_drop,
                                    subset_size=calibration.subset_size,
                                    asymmetric_activations=asymmetric_activations(resolved.spec))
        record_int8_quality(ir, quality, float_layers_kept(ir))
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


def record_int8_quality(ir: ov.Model, quality: Parity | None, float_layers: int) -> None:
    """Say how the int8 model follows fp32 on photos it was not calibrated on, and keep it in the IR's
    rt_info (`int8_top1_agreement`, `int8_held_out`, `int8_float_layers`) for whoever loads the file."""
    ir.set_rt_info(str(float_layers), [SECTION, "int8_float_layers"])
    if quality is None:
        log.warning("int8: no held-out photos (fewer than 2 calibration photos), so its agreement with fp32 "
                    "was not measured")
        return
    ir.set_rt_info(f"{quality.top1:.4f}", [SECTION, "int8_top1_agreement"])
    ir.set_rt_info(str(quality.count), [SECTION, "int8_held_out"])
    log.info("int8: top-1 agrees with fp32 on %d of %d held-out photos (%.1f %%), max |dp| %.3f; %d layers in float",
             round(quality.top1 * quality.count), quality.count, 100 * quality.top1, quality.max_abs_diff,
             float_layers)
