"""Optional engines are imported on first use, so `import effnet` needs none of them."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingEngineError

# Which extra brings each optional module (pyproject's [project.optional-dependencies]).
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "openvino": "openvino", "nncf": "int8"}


def require(module: str) -> ModuleType:
    """Import an optional engine, or raise MissingEngineError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module.split(".")[0], "all")
        raise MissingEngineError(
            f"{module} is not installed (needed for this engine or export); "
            f"install it with: pip install 'effnet[{extra}]'"
        ) from exc


def installed(module: str) -> bool:
    """Whether an optional engine can be imported (without raising)."""
    try:
        require(module)
    except MissingEngineError:
        return False
    return True
