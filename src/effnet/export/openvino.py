"""OpenVINO IR: the card's converted model. Input `data` (N, 3, S, S) raw 0-255 **BGR**, output `prob`.

Conversion goes through the ONNX file, as the Open Model Zoo does; channel reversal, mean and scale are
added with OpenVINO's PrePostProcessor, the same operations `mo --reverse_input_channels
--mean_values --scale_values` embedded, so the card's users feed OpenCV frames unchanged.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..preprocess import PreprocessConfig
from .metadata import SECTION
from .onnx import INPUT, OUTPUT
from .optional import require

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
    data = ppp.input(INPUT)
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


def _rewrite_each(model: ov.Model, replacement: Callable[[ov.Node], ov.Node | None]) -> int:
    """Replace, in place, every node for which replacement(node) builds a stand-in (same outputs,
    same friendly name); returns how many were replaced."""
    count = 0
    for op in model.get_ordered_ops():
        new = replacement(op)
        if new is None:
            continue
        new.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(new.output(0))
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count


def spatial_means_as_avg_pools(model: ov.Model) -> int:
    """Rewrite, in place, every ReduceMean over the whole (H, W) map as an AvgPool whose window is the
    map; returns how many. The same mean (f32 parity on photos ~1e-7), which OpenVINO's CPU plugin
    computes 2-3x faster on large maps: B7's 55 squeeze-excitation pools took 4.5 % of its time, and
    the rewrite gains about 3 % throughput."""
    require("openvino")
    import openvino.opset13 as ops

    def avg_pool(op: ov.Node) -> ov.Node | None:
        if op.get_type_name() != "ReduceMean":
            return None
        shape, axes = op.input(0).get_partial_shape(), op.input_value(1).get_node()
        if shape.rank.is_dynamic or shape.rank.get_length() != 4 or axes.get_type_name() != "Constant":
            return None
        if sorted(int(a) % 4 for a in axes.get_data().ravel()) != [2, 3] or not shape[2:].is_static:
            return None
        height, width = shape[2].get_length(), shape[3].get_length()
        pool = ops.avg_pool(op.input_value(0), strides=[1, 1], pads_begin=[0, 0], pads_end=[0, 0],
                            kernel_shape=[height, width], exclude_pad=True)
        return pool if op.get_attributes()["keep_dims"] else ops.squeeze(pool, ops.constant(np.array([2, 3])))

    return _rewrite_each(model, avg_pool)


def gates_into_projections(model: ov.Model, min_pixels_per_output: int = 8) -> int:
    """Fold, in place, each squeeze-excitation gate into the 1x1 convolution that reads the gated map:
    conv(x * g, W) = conv(x, W * g), with g (1, C, 1, 1) computed per image; returns how many.

    The gate's pass over the C x H x W map goes away, but the CPU plugin repacks the scaled C_out x C
    weights at every inference, so only maps with at least `min_pixels_per_output` pixels per output
    channel are folded (B7: 28 of 55 gates, +3 % throughput; folding all 55 loses 1 %). Batch 1
    only, as the gate differs per image. f32 outputs move by ~1e-7 (another rounding order).
    """
    require("openvino")
    import openvino.opset13 as ops

    def folded(conv: ov.Node) -> ov.Node | None:
        if conv.get_type_name() != "Convolution":
            return None
        gated, weights = conv.input_value(0), conv.input_value(1)
        op = gated.get_node()
        if op.get_type_name() != "Multiply" or weights.get_node().get_type_name() != "Constant":
            return None
        if len(gated.get_target_inputs()) != 1:  # the gated map feeds only this convolution
            return None
        x, gate = op.input_value(0), op.input_value(1)
        if not (x.get_partial_shape().is_static and gate.get_partial_shape().is_static):
            return None
        if list(x.get_shape())[2:] == [1, 1]:
            x, gate = gate, x  # the gate, (1, C, 1, 1), may be either operand
        x_shape, gate_shape = list(x.get_shape()), list(gate.get_shape())
        out_channels, _, kh, kw = weights.get_shape()
        if len(x_shape) != 4 or x_shape[0] != 1 or gate_shape != [1, x_shape[1], 1, 1] or (kh, kw) != (1, 1):
            return None
        if x_shape[2] * x_shape[3] < min_pixels_per_output * out_channels:
            return None
        a = conv.get_attributes()
        return ops.convolution(x, ops.multiply(weights, gate), a["strides"], a["pads_begin"], a["pads_end"],
                               a["dilations"], a["auto_pad"].upper())

    return _rewrite_each(model, folded)


ENGINE_REVISION = 2  # part of the engine IR's cache key: bump it when engine_model builds something else


def engine_model(model: ov.Model) -> ov.Model:
    """What OpenVINOBackend compiles: the card's IR with uint8 RGB input (`with_u8_rgb_input`), its
    spatial means as AvgPools (`spatial_means_as_avg_pools`) and the large squeeze-excitation gates
    folded into the projections' weights (`gates_into_projections`). The same network; the exported
    card IR stays the plain conversion, as the Open Model Zoo's converter makes it."""
    spatial_means_as_avg_pools(model)
    gates_into_projections(model)
    return with_u8_rgb_input(model)


def with_u8_rgb_input(model: ov.Model) -> ov.Model:
    """The card's IR taking what effnet's engines get: uint8 (N, S, S, 3) RGB crops.

    The conversion to float, the transpose and RGB -> BGR run inside the compiled graph, so Python
    never makes a float copy of the batch.
    """
    ov = require("openvino")
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    data = ppp.input(INPUT)
    data.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    data.model().set_layout(ov.Layout("NCHW"))
    data.preprocess().convert_element_type(ov.Type.f32).reverse_channels()
    return ppp.build()


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


__all__ = ["OUTPUT", "bgr_nchw", "convert_onnx", "engine_model", "export_openvino", "run_ir", "rt_info", "save_ir",
           "spatial_means_as_avg_pools", "with_u8_rgb_input"]
