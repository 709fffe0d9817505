"""What an exported file says about itself: model name, labels and preprocessing (ONNX metadata, IR rt_info)."""
from __future__ import annotations

import json

from ..contract import INPUT_NAME, OUTPUT_NAME
from ..labels import imagenet_labels
from ..resolved import ResolvedModel

SECTION = "effnet"  # rt_info section of the IR; ONNX metadata keys get the same names


def describe(resolved: ResolvedModel, *, color: str, folded: bool) -> dict[str, str]:
    """String facts for the exported model. `folded`: mean/scale are inside the graph (the IR), so a
    caller feeds raw 0-255 pixels; otherwise (ONNX) it feeds (x - mean) / std itself."""
    config = resolved.preprocess
    return {
        "model_name": resolved.name,
        "weights_sha256": resolved.weights_sha256 or "random",
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "color_order": color,
        "input_range": "0-255, mean and scale applied in the graph" if folded else "(x - mean) / std",
        "mean_values": json.dumps(list(config.mean)),
        "scale_values": json.dumps(list(config.std)),
        "resize_shorter_side": str(config.resize_size),
        "crop_size": str(config.input_size),
        "interpolation": config.interpolation.value,
        "labels": json.dumps(list(imagenet_labels())),
    }
