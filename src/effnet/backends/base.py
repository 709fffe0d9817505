"""The one protocol every inference engine implements."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    """Runs the network on centre crops and returns the card's `prob` output.

    Input is uint8 RGB crops (N, S, S, 3), not normalised floats: normalisation belongs to the
    engine, because the converted (OpenVINO) model has mean and scale folded into its graph.
    """

    name: str
    precision: str

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB -> (N, 1000) float32 softmax probabilities."""
        ...
