"""ONNX: the card's original model. Input `data` (N, 3, S, S) normalised RGB, output `prob` (N, 1000)."""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..contract import INPUT_NAME as INPUT
from ..contract import OUTPUT_NAME as OUTPUT
from ..model import EfficientNet
from ..optional import require

OPSET = 17  # read by every ONNX Runtime and OpenVINO release the extras allow


class WithSoftmax(nn.Module):
    """The card's graph ends in softmax (`prob`), not logits."""

    def __init__(self, model: EfficientNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(-1)


def export_onnx(model: EfficientNet, path: str | os.PathLike[str], *, batch: int | None = 1,
                opset: int = OPSET, metadata: Mapping[str, str] | None = None) -> Path:
    """Write `model` (with static SAME pads: `set_input_size` first) as the card's ONNX model.

    `batch` None gives a dynamic batch axis. Every Pad op ends up with constant pads, and the file
    passes `onnx.checker`.
    """
    onnx = require("onnx")
    if model.input_size is None:
        raise ValueError("export needs static padding: call model.set_input_size(size) first")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = model.input_size
    example = torch.zeros(batch or 1, 3, h, w)
    dynamic = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}} if batch is None else None
    # The wrapper must be in eval mode itself: the exporter restores the wrapper's mode afterwards,
    # recursively, which would leave a fresh (training) wrapper's model in training mode.
    wrapper = WithSoftmax(model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter (no onnxscript needed) warns about its own deprecation and about
        # Slice steps it will not fold; freeze_pads below does that folding.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(path), dynamo=False,
                          input_names=[INPUT], output_names=[OUTPUT], dynamic_axes=dynamic,
                          opset_version=opset, do_constant_folding=True)
    proto = onnx.load(str(path))
    freeze_pads(proto)
    proto.producer_name = "effnet"
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return path


def computed_pads(proto) -> list[str]:
    """Names of Pad nodes whose pads are not a stored constant (an initializer or Constant node)."""
    constants = {t.name for t in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in proto.graph.node if n.op_type == "Pad" and n.input[1] not in constants]


def freeze_pads(proto) -> None:
    """Replace each Pad's pads subgraph by its value.

    The TorchScript exporter builds pads from constants through Concat/Slice(step -1)/Transpose and
    leaves that unfolded; evaluating it once here makes the pads an initializer, so no engine sees a
    Pad whose amounts are computed at run time.
    """
    onnx = require("onnx")
    from onnx.reference import ReferenceEvaluator

    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    initializers = {t.name: t for t in graph.initializer}
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        if pad.input[1] in initializers:
            continue
        nodes, needed = _constant_ancestors(pad.input[1], graph.node, producer, initializers)
        result = onnx.helper.make_tensor_value_info(pad.input[1], onnx.TensorProto.INT64, None)
        sub = onnx.helper.make_model(
            onnx.helper.make_graph(nodes, "pads", [], [result], initializer=[initializers[n] for n in needed]),
            opset_imports=proto.opset_import)
        (value,) = ReferenceEvaluator(sub).run(None, {})
        name = f"{pad.name}/pads"
        graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value, np.int64), name))
        initializers[name] = graph.initializer[-1]
        pad.input[1] = name
    _drop_dead_nodes(graph)


def _constant_ancestors(name: str, all_nodes, producer: dict, initializers: dict) -> tuple[list, set[str]]:
    """The nodes computing `name` (in graph order) and initializers they read; fails on a graph input."""
    nodes, needed, stack, seen = {}, set(), [name], set()
    while stack:
        value = stack.pop()
        if value in seen or not value:
            continue
        seen.add(value)
        if value in initializers:
            needed.add(value)
        elif value in producer:
            node = producer[value]
            nodes[id(node)] = node
            stack.extend(node.input)
        else:
            raise ValueError(f"pads {name!r} depend on the graph input {value!r}: padding is not static")
    return [n for n in all_nodes if id(n) in nodes], needed


def _drop_dead_nodes(graph) -> None:
    outputs = {o.name for o in graph.output}
    while True:
        used = outputs | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)


def run_onnx(path: str | os.PathLike[str], data: np.ndarray) -> np.ndarray:
    """`prob` of the ONNX file for normalised (N, 3, S, S) input, with ONNX Runtime on the CPU."""
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    static = isinstance(session.get_inputs()[0].shape[0], int)
    # A batch-1 file takes one image per run.
    parts = [session.run([OUTPUT], {INPUT: data[i:i + 1]})[0] for i in range(len(data))] if static \
        else [session.run([OUTPUT], {INPUT: data})[0]]
    return np.concatenate(parts)
