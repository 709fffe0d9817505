"""The functional API: build a model with its weights, preprocess like the weights expect."""
from __future__ import annotations

import numpy as np

from .arch import DEFAULT_MODEL, list_models
from .model import EfficientNet
from .decode import ImageSource, preprocess_image
from .resolved import UNSET, ResolvedModel, Weights, resolve

__all__ = ["create_model", "preprocess", "list_models", "resolve"]


def create_model(model: str | ResolvedModel = DEFAULT_MODEL, weights: Weights = UNSET, *,
                 input_size: int | tuple[int, int] | None = None) -> EfficientNet:
    """An eval-mode EfficientNet whose forward returns logits; `input_size` fixes its SAME pads.
    `weights` (with a model name): None/"random" (the default), "imagenet" (the official file, downloaded
    once) or a file path; a ResolvedModel brings its own."""
    if isinstance(model, ResolvedModel):
        return resolve(model, weights).create_model(input_size)
    return resolve(model, None if weights is UNSET else weights).create_model(input_size)


def preprocess(image: ImageSource, model: str | ResolvedModel = DEFAULT_MODEL, *,
               exif_transpose: bool = True) -> np.ndarray:
    """(1, 3, S, S) float32 RGB, exactly as `model`'s weights expect (OMZ accuracy checker's rule)."""
    config = model.preprocess if isinstance(model, ResolvedModel) else resolve(model, None).preprocess
    return preprocess_image(image, config, exif_transpose=exif_transpose)
