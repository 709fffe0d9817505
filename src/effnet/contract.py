"""The card's contract, defined once: the tensor names of the original and converted models, the class
count (from the labels the network answers with), the weights' short identity, and how probabilities
are ranked into top-k answers. Every module that speaks of these imports them from here."""
from __future__ import annotations

import numpy as np

from .labels import imagenet_labels

# The card's tensor names: in the ONNX file, the IR, and the server's protocol.
INPUT_NAME = "data"
OUTPUT_NAME = "prob"
RANDOM_WEIGHTS_ID = "random"


def num_classes() -> int:
    """Classes the network answers (ImageNet-1k): the length of the label table, not a second literal."""
    return len(imagenet_labels())


def weights_id(sha256: str | None) -> str:
    """The weights in keys, file names and headers: the sha256's first 16 hex digits, or 'random'."""
    return sha256[:16] if sha256 else RANDOM_WEIGHTS_ID


def ranked(probs: np.ndarray, top: int) -> np.ndarray:
    """(N, k) class indices, most likely first, k = `top` clamped to 1..classes; ties keep the lower index
    first (a stable sort), so every output of effnet ranks equal probabilities the same way."""
    top = max(1, min(top, probs.shape[-1]))
    return np.argsort(-probs, axis=-1, kind="stable")[..., :top]
