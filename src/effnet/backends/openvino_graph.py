"""effnet's OpenVINO engine graph: the card's IR rewritten for speed on CPUs (same network, same
numbers within float rounding), with uint8 RGB crops in. The exported card IR stays the plain
conversion; only OpenVINOBackend compiles this one, which is cached beside the exports."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..cache_layout import CacheLayout
from ..contract import INPUT_NAME
from ..engines import EngineChoice
from ..export.cache import cached, export_key
from ..optional import require
from ..resolved import ResolvedModel

if TYPE_CHECKING:
    import openvino as ov

log = logging.getLogger(__name__)


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
    data = ppp.input(INPUT_NAME)
    data.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    data.model().set_layout(ov.Layout("NCHW"))
    data.preprocess().convert_element_type(ov.Type.f32).reverse_channels()
    return ppp.build()


def engine_ir(resolved: ResolvedModel, engine: EngineChoice, *, batch: int | None = 1,
              layout: CacheLayout | None = None) -> Path:
    """The engine IR (`.xml`) for `resolved` as `engine` runs it (fp32, fp16 or int8 in the file: bf16 is a
    compute mode of the fp32 file), built once and cached under a key that includes ENGINE_REVISION."""
    from ..export.build import build_ir
    from ..export.openvino import save_ir

    precision = "fp32" if engine.precision == "bf16" else engine.precision
    calibration = engine.calibration if precision == "int8" else None
    key = export_key(resolved, f"openvino_engine{ENGINE_REVISION}", precision, batch, calibration)

    def make() -> ov.Model:
        network = resolved.create_model(input_size=resolved.input_size)  # the weights are read (and checked) first
        kept = "kept in the cache for later runs where it is writable" if key else "random weights: not kept"
        log.info("building the %s %s OpenVINO engine model (B7 takes about a minute; %s)", resolved.name,
                 precision, kept)
        return engine_model(build_ir(resolved, precision, batch=batch, calibration=calibration, network=network))

    return cached(key, "model.xml", layout, make, lambda model, path: save_ir(model, path, precision))
