"""effnet: the EfficientNet-B7 ImageNet classifier of the OpenVINO Open Model Zoo card
`efficientnet-b7-pytorch` (and its family), with exact weights, preprocessing, export and engines."""
from .api import create_model, list_models, preprocess, resolve
from .arch import DEFAULT_MODEL
from .classifier import Classifier, Outcome, Prediction
from .errors import (
                     EffnetError,
                     ImageError,
                     MissingEngineError,
                     UnknownModelError,
                     WeightsError,
                     WeightsNotFoundError,
)
from .resolved import ResolvedModel

__version__ = "0.1.0"

__all__ = ["DEFAULT_MODEL", "Classifier", "EffnetError", "ImageError", "MissingEngineError", "Outcome",
           "Prediction", "ResolvedModel", "UnknownModelError", "WeightsError", "WeightsNotFoundError",
           "create_model", "list_models", "preprocess", "resolve", "__version__"]
