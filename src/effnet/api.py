"""The functional API: build a model with its weights, preprocess like the weights expect."""
from __future__ import annotations

import os

import numpy as np

from .arch import DEFAULT_MODEL, list_models
from .checkpoint import load_strict, to_native
from .model import EfficientNet, build_model
from .preprocess import ImageSource, preprocess_image
from .weights import preprocess_config, read_state_dict, resolve_weights

__all__ = ["create_model", "preprocess", "list_models"]

Weights = str | os.PathLike | None  # None: random init; "imagenet": the registry's file; else a path


def create_model(name: str = DEFAULT_MODEL, weights: Weights = None, *,
                 input_size: int | tuple[int, int] | None = None) -> EfficientNet:
    """An eval-mode EfficientNet whose forward returns logits; `input_size` fixes its SAME pads."""
    model = build_model(name, input_size)
    path = resolve_weights(name, weights)
    if path is not None:
        load_strict(model, to_native(read_state_dict(path), model.spec), source=str(path))
    return model


def preprocess(image: ImageSource, name: str = DEFAULT_MODEL, *, exif_transpose: bool = True) -> np.ndarray:
    """(1, 3, S, S) float32 RGB, exactly as `name`'s weights expect (OMZ accuracy checker's rule)."""
    return preprocess_image(image, preprocess_config(name), exif_transpose=exif_transpose)
