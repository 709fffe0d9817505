"""OpenVINO IR: the card's converted model. Input `data` (N, 3, S, S) raw 0-255 **BGR**, output `prob`.

Conversion goes through the ONNX file, as the Open Model Zoo does; channel reversal, mean and scale are
added with OpenVINO's PrePostProcessor, the same operations `mo --reverse_input_channels
--mean_values --scale_values` embedded, so the card's users feed OpenCV frames unchanged.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..contract import INPUT_NAME
from ..optional import require
from ..preprocessing import PreprocessConfig
from .metadata import SECTION

if TYPE_CHECKING:
    import openvino as ov

IR_PRECISIONS = ("fp32", "fp16")  # weight storage in the .bin; int8 comes from export.quantize


def convert_onnx(onnx_path: str | os.PathLike[str], config: PreprocessConfig,
                 metadata: Mapping[str, str] | None = None) -> ov.Model:
    """The card's IR (in memory) from the card's ONNX file: BGR raw input, mean/scale folded in."""
    ov = require("openvino")
    from openvino.preprocess import PrePostProcessor

    model = ov.convert_model(str(onnx_path))
    ppp = PrePostProcessor(model)
    data = ppp.input(INPUT_NAME)
    data.tensor().set_layout(ov.Layout("NCHW"))
    data.model().set_layout(ov.Layout("NCHW"))
    # Steps act on the user's tensor in order: BGR -> RGB, then the RGB statistics.
    data.preprocess().reverse_channels().mean(list(config.mean)).scale(list(config.std))
    model = ppp.build()
    for key, value in (metadata or {}).items():
        model.set_rt_info(value, [SECTION, key])
    return model


def save_ir(model: ov.Model, xml_path: str | os.PathLike[str], precision: str = "fp32") -> Path:
    """Write `.xml` + `.bin`; fp32 weights unless `precision` is fp16 (save_model would halve them by default)."""
    ov = require("openvino")
    if precision not in IR_PRECISIONS + ("int8",):
        raise ValueError(f"IR precision must be one of fp32, fp16, int8, got {precision!r}")
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    model.set_rt_info(precision, [SECTION, "precision"])
    # int8 models keep their non-quantised weights in fp32: NNCF calibrated against those.
    ov.save_model(model, str(xml_path), compress_to_fp16=precision == "fp16")
    return xml_path


def export_openvino(onnx_path: str | os.PathLike[str], xml_path: str | os.PathLike[str],
                    config: PreprocessConfig, *, precision: str = "fp32",
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Convert the card's ONNX file into the card's IR (fp32 or fp16 weights) at `xml_path`."""
    return save_ir(convert_onnx(onnx_path, config, metadata), xml_path, precision)


def bgr_nchw(crops: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, 3) RGB crops -> float32 (N, 3, S, S) BGR 0-255: what the card's IR takes."""
    return np.ascontiguousarray(crops[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)


def run_ir(model: ov.Model | str | os.PathLike[str], data: np.ndarray, *,
           config: Mapping[str, str] | None = None) -> np.ndarray:
    """`prob` of an IR for its native input (the card's: (N, 3, S, S) BGR 0-255), on the CPU in f32."""
    ov = require("openvino")
    core = ov.Core()
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", **(config or {})})
    static = compiled.input(0).get_partial_shape()[0].is_static
    request = compiled.create_infer_request()
    parts = [request.infer({0: data[i:i + 1]})[compiled.output(0)].copy() for i in range(len(data))] if static \
        else [request.infer({0: data})[compiled.output(0)].copy()]
    return np.concatenate(parts)


def rt_info(model: ov.Model, key: str) -> str:
    """One of effnet's facts recorded in the IR, e.g. rt_info(model, "model_name")."""
    return model.get_rt_info([SECTION, key]).astype(str)


__all__ = ["bgr_nchw", "convert_onnx", "export_openvino", "run_ir", "rt_info", "save_ir"]
