"""Optional engines are imported on first use, so `import effnet` needs none of them."""
from __future__ import annotations

import importlib
import os
from types import ModuleType

from .errors import MissingEngineError

# Which extra brings each optional module (pyproject's [project.optional-dependencies]).
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "openvino": "openvino", "nncf": "int8"}

# Environment a module reads when it is imported, set first unless the user set it. ONNX Runtime's telemetry
# (on Linux since 1.32) keeps a device id and a database in ~/.cache/Microsoft and has no setting to keep
# them elsewhere but XDG_CACHE_HOME, which would move every other program's cache too: it is switched off.
# OpenVINO's (openvino-telemetry, ~/intel) has no such switch; the README names what it writes.
BEFORE_IMPORT = {"onnxruntime": {"ORT_DISABLE_TELEMETRY": "1"}}


def require(module: str) -> ModuleType:
    """Import an optional engine, or raise MissingEngineError naming the extra that installs it."""
    for name, value in BEFORE_IMPORT.get(module.split(".")[0], {}).items():
        os.environ.setdefault(name, value)
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
