"""The engine vocabulary, defined once: engine kinds, precisions, performance hints, the card's IO names."""
from __future__ import annotations

# The card's tensor names, in the ONNX file, the IR, and the server's protocol.
INPUT_NAME = "data"
OUTPUT_NAME = "prob"

KINDS = ("torch", "onnxruntime", "openvino", "auto")
# Fastest first on x86 CPUs (B7, 2 AVX-512 cores): what `auto` tries, in order.
SPEED_ORDER = ("openvino", "onnxruntime", "torch")
PRECISIONS: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16"),
    "onnxruntime": ("fp32",),
    "openvino": ("fp32", "bf16", "fp16", "int8"),
}
ALL_PRECISIONS = tuple(dict.fromkeys(p for ps in PRECISIONS.values() for p in ps))  # fp32, bf16, fp16, int8
# Precisions a model *file* can hold; bf16 is a compute mode of an fp32 file.
FILE_PRECISIONS = ("fp32", "fp16", "int8")
HINTS = ("THROUGHPUT", "LATENCY")  # OpenVINO's performance hints
# The optional module each engine needs (torch is a core dependency).
ENGINE_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
