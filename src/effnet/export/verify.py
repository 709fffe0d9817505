"""Parity of an exported model with PyTorch: max |difference| of probabilities and top-k agreement."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..model import EfficientNet
from ..preprocessing import PreprocessConfig, normalize

FP32_TOLERANCE = 1e-4  # on probabilities; fp32 engines reorder sums, nothing more


@dataclass(frozen=True)
class Agreement:
    """How closely `candidate` probabilities follow `reference` ones, over `count` images."""

    count: int
    max_abs_diff: float
    top1: float  # fraction of images whose top-1 class is the same
    top5: float  # fraction whose reference top-1 is among the candidate's top 5

    def __str__(self) -> str:
        return (f"{self.count} images: max |dp| {self.max_abs_diff:.2e}, top-1 agreement {self.top1:.1%}, "
                f"top-5 agreement {self.top5:.1%}")


def compare(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Agreement of `candidate` with `reference`, both (N, classes): top-1/top-5 as if the reference's
    top-1 were the label."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    labels = reference.argmax(1)
    top1 = np.mean(candidate.argmax(1) == labels)
    top5 = np.mean(np.any(np.argsort(-candidate, axis=1)[:, :5] == labels[:, None], axis=1))
    return Agreement(len(reference), float(np.abs(reference - candidate).max()), float(top1), float(top5))


def normalized_nchw(crops: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """uint8 (N, S, S, 3) RGB -> float32 (N, 3, S, S) (x - mean) / std: the card's ONNX/PyTorch input,
    normalised exactly as preprocessing does."""
    return np.stack([normalize(crop, config) for crop in crops])


def torch_probabilities(model: EfficientNet, crops: np.ndarray, config: PreprocessConfig,
                        batch: int = 4) -> np.ndarray:
    """The reference: PyTorch fp32 softmax on normalised RGB."""
    data = torch.from_numpy(normalized_nchw(crops, config))
    with torch.inference_mode():
        return torch.cat([model(data[i:i + batch]).softmax(-1) for i in range(0, len(data), batch)]).numpy()


def synthetic_crops(size: int, count: int = 4, seed: int = 0) -> np.ndarray:
    """Smooth, photo-like uint8 (N, S, S, 3) crops (blurred colour fields plus grain) for when no
    images were given: enough to catch any layout, channel-order or normalisation mistake."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        field = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), np.float32)
        out.append(np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8))
    return np.stack(out)
