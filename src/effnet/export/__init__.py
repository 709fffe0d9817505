"""Export to the card's two forms: ONNX (the original model, normalised RGB in) and OpenVINO IR (the
converted model, raw BGR in with mean/scale folded), plus NNCF INT8; each checked against PyTorch.

Talks to the model and weights only; the engines (onnxruntime, openvino, nncf) are imported on use.
"""
from .build import build_ir
from .cache import cached_ir, cached_onnx
from .onnx import export_onnx
from .openvino import export_openvino
from .pipeline import FORMATS, Exported, ParityError, check_request, export_model
from .quantize import quantize_int8
from .verify import Parity, compare

__all__ = ["FORMATS", "Parity", "build_ir", "Exported", "ParityError", "cached_ir", "cached_onnx",
           "check_request", "compare", "export_model", "export_onnx", "export_openvino", "quantize_int8"]
