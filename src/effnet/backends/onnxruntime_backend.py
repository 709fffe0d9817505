"""ONNX Runtime on the card's original (ONNX) model: normalised RGB NCHW in, `prob` out."""
from __future__ import annotations

import os

import numpy as np

from ..contract import INPUT_NAME as INPUT
from ..contract import OUTPUT_NAME as OUTPUT
from ..optional import require
from ..preprocessing import PreprocessConfig


class OnnxRuntimeBackend:
    name = "onnxruntime"
    precision = "fp32"  # the CPU provider runs this graph in fp32 only
    device = "cpu"
    torch_module = None  # a graph of its own: Grad-CAM builds a torch model

    def __init__(self, path: str | os.PathLike[str], config: PreprocessConfig, *, threads: int | None = None) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        # (x - mean) / std as one multiply-add per pixel, in the input's channel-last layout.
        self.scale = (1.0 / np.asarray(config.std, np.float32))
        self.shift = -np.asarray(config.mean, np.float32) * self.scale
        self.static_batch = self.session.get_inputs()[0].shape[0]
        if not isinstance(self.static_batch, int):
            self.static_batch = None

    def settings(self) -> dict:
        threads = self.session.get_session_options().intra_op_num_threads
        return {"threads": threads or os.cpu_count(), "streams": 1}  # 0: ONNX Runtime's default, all cores

    def predict(self, crops: np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.session.get_outputs()[0].shape[1]), np.float32)
        x = crops.astype(np.float32) * self.scale + self.shift
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if self.static_batch is None:
            return self.session.run([OUTPUT], {INPUT: x})[0]
        step = self.static_batch
        return np.concatenate([self.session.run([OUTPUT], {INPUT: x[i:i + step]})[0]
                               for i in range(0, len(x), step)])
