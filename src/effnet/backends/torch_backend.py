"""PyTorch eager: the card's original model."""
from __future__ import annotations

import numpy as np
import torch

from ..model import EfficientNet
from ..preprocessing import PreprocessConfig, normalize


class TorchBackend:
    name = "torch"

    def __init__(self, model: EfficientNet, config: PreprocessConfig, *, bf16: bool = False,
                 channels_last: bool = True) -> None:
        self.model = model.eval()
        self.bf16 = bf16
        self.precision = "bf16" if bf16 else "fp32"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.config = config

    def settings(self) -> dict:
        return {"threads": torch.get_num_threads(), "streams": 1}

    def predict(self, crops: np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.model.classifier.out_features), np.float32)
        # The checker's float64-exact normalisation (a lookup table), not float32 arithmetic in torch.
        x = torch.from_numpy(np.stack([normalize(c, self.config) for c in crops]))
        x = x.contiguous(memory_format=self.memory_format)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(x)
        return logits.float().softmax(-1).numpy()
