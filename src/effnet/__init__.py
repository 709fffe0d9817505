"""effnet: the EfficientNet-B7 ImageNet classifier of the OpenVINO Open Model Zoo card
`efficientnet-b7-pytorch` (and its family), with exact weights, preprocessing, export and engines.

The names below that need PyTorch are imported on first use (PEP 562), so that `import effnet.cli` and
commands that need no model (`effnet --version`, `effnet cache`) start without importing torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .arch import DEFAULT_MODEL
from .errors import (
                     EffnetError,
                     EngineError,
                     ImageError,
                     MissingEngineError,
                     UnknownModelError,
                     WeightsError,
                     WeightsNotFoundError,
)

__version__ = "0.1.0"

__all__ = ["DEFAULT_MODEL", "Classifier", "EffnetError", "EngineChoice", "EngineError", "ImageError",
           "MissingEngineError", "Outcome", "Prediction", "ResolvedModel", "UnknownModelError", "WeightsError",
           "WeightsNotFoundError", "create_model", "list_models", "preprocess", "resolve", "resolve_engine",
           "__version__"]

# name -> the module that defines it, imported when the name is first used
_LAZY = {"create_model": "api", "list_models": "api", "preprocess": "api", "resolve": "api",
         "Classifier": "classifier", "Outcome": "classifier", "Prediction": "classifier",
         "ResolvedModel": "resolved", "EngineChoice": "engines", "resolve_engine": "engines"}

if TYPE_CHECKING:
    from .api import create_model, list_models, preprocess, resolve
    from .classifier import Classifier, Outcome, Prediction
    from .engines import EngineChoice, resolve_engine
    from .resolved import ResolvedModel


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'effnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later uses find it without coming here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
