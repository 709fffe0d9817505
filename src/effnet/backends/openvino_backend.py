"""OpenVINO on the card's converted (IR) model, fed the uint8 RGB crops as they are.

The IR's PrePostProcessor front (u8 NHWC RGB -> f32 NCHW BGR -> mean/scale) runs inside the
compiled graph. Batches are split over several infer requests so that all CPU streams work at once;
the compiled blob is cached (CACHE_DIR), so a second process skips compilation.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import EffnetError
from ..export.optional import require

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
HINTS = ("THROUGHPUT", "LATENCY")


def inference_precision(precision: str, capabilities: list[str]) -> str:
    """The CPU plugin's INFERENCE_PRECISION_HINT for effnet's precision name.

    fp16 and int8 name how the IR stores weights; their remaining float math runs in f32 here
    (f16 only where the CPU computes in it). bf16 keeps fp32 weights and computes in bfloat16.
    """
    if precision == "bf16":
        if "BF16" not in capabilities:
            raise EffnetError("this CPU has no bfloat16 support (OpenVINO CPU capabilities: "
                              f"{', '.join(capabilities)}); use --precision fp32 or int8")
        return "bf16"
    if precision == "fp16" and "FP16" in capabilities:
        return "f16"
    return "f32"


class OpenVINOBackend:
    """`hint` THROUGHPUT (default) vs LATENCY, B7 classify path on 2 AVX-512 cores, img/s: fp32 4.2 vs
    4.4, bf16 8.0 vs 7.8, int8 10.3 vs 9.8; under load from other processes THROUGHPUT's two 1-thread
    streams held up better. LATENCY answers a single image about twice as fast (both threads on it)."""

    name = "openvino"

    def __init__(self, xml: str | os.PathLike[str], *, precision: str = "fp32", hint: str = "THROUGHPUT",
                 cache_dir: str | os.PathLike[str] | None = None, requests: int | None = None,
                 streams: int | None = None, threads: int | None = None) -> None:
        """`xml`: an IR with effnet's u8 RGB front (export.openvino.with_u8_rgb_input): cached_ir(engine=True)."""
        ov = require("openvino")
        if precision not in PRECISIONS:
            raise EffnetError(f"openvino precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if hint not in HINTS:
            raise EffnetError(f"performance hint must be one of {', '.join(HINTS)}, got {hint!r}")
        self.precision = precision
        core = ov.Core()
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache_dir)})
        config = {"PERFORMANCE_HINT": hint,
                  "INFERENCE_PRECISION_HINT": inference_precision(
                      precision, core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))}
        if streams:  # overrides what the hint would pick
            config["NUM_STREAMS"] = streams
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = self._compile(core, xml, config, cached=cache_dir is not None)
        data = self.compiled.input(0)
        if data.get_element_type() != ov.Type.u8:
            raise EffnetError(f"{xml} does not take uint8 crops; build it with cached_ir(..., engine=True)")
        batch = data.get_partial_shape()[0]
        self.static_batch = batch.get_length() if batch.is_static else None
        self.requests = requests or self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        self.queue = ov.AsyncInferQueue(self.compiled, self.requests)
        self.queue.set_callback(self._collect)

    @staticmethod
    def _compile(core, xml: str | os.PathLike[str], config: dict, *, cached: bool):
        """Compile from the path, so that a cache hit skips reading the model. The cache keeps blobs
        without weights (CACHE_MODE OPTIMIZE_SIZE: 1 MB instead of B7's 265 MB, loads as fast), which
        it maps from the IR's .bin; OpenVINO releases that predate the mode get a full blob."""
        if cached:
            try:
                return core.compile_model(str(xml), "CPU", {**config, "CACHE_MODE": "OPTIMIZE_SIZE"})
            except RuntimeError:
                pass
        return core.compile_model(str(xml), "CPU", config)

    @staticmethod
    def _collect(request, userdata: tuple[np.ndarray, int, int]) -> None:
        out, start, stop = userdata
        out[start:stop] = request.get_output_tensor(0).data[:stop - start]

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        """(start, stop) pieces: the IR's batch if fixed, else about one per infer request."""
        step = self.static_batch or -(-n // self.requests)
        return [(i, min(i + step, n)) for i in range(0, n, step)]

    def predict(self, crops: np.ndarray) -> np.ndarray:
        crops = np.ascontiguousarray(crops, dtype=np.uint8)
        out = np.empty((len(crops), self.compiled.output(0).get_partial_shape()[1].get_length()), np.float32)
        pieces = []  # the requests read these in place (share_inputs): keep them alive until done
        for start, stop in self._chunks(len(crops)):
            piece = crops[start:stop]
            if self.static_batch and len(piece) < self.static_batch:  # the tail of a fixed-batch IR
                piece = np.concatenate([piece, np.zeros((self.static_batch - len(piece), *piece.shape[1:]), np.uint8)])
            pieces.append(piece)
            self.queue.start_async({0: piece}, (out, start, stop), share_inputs=True)
        self.queue.wait_all()
        return out

