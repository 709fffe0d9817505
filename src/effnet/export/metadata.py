"""What an exported file says about itself: model name, labels and preprocessing (ONNX metadata, IR rt_info)."""
from __future__ import annotations

import json

from ..labels import imagenet_labels
from ..preprocess import PreprocessConfig

SECTION = "effnet"  # rt_info section of the IR; ONNX metadata keys get the same names


def describe(name: str, config: PreprocessConfig, *, color: str, folded: bool) -> dict[str, str]:
    """String facts for the exported model. `folded`: mean/scale are inside the graph (the IR), so a
    caller feeds raw 0-255 pixels; otherwise (ONNX) it feeds (x - mean) / std itself."""
    return {
        "model_name": name,
        "input": "data",
        "output": "prob",
        "color_order": color,
        "input_range": "0-255, mean and scale applied in the graph" if folded else "(x - mean) / std",
        "mean_values": json.dumps(list(config.mean)),
        "scale_values": json.dumps(list(config.std)),
        "resize_shorter_side": str(config.resize_size),
        "crop_size": str(config.input_size),
        "interpolation": config.interpolation.value,
        "labels": json.dumps(list(imagenet_labels())),
    }
