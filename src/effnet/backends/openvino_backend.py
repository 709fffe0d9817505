"""OpenVINO on the card's converted (IR) model, fed the uint8 RGB crops as they are.

The IR's PrePostProcessor front (u8 NHWC RGB -> f32 NCHW BGR -> mean/scale) runs inside the
compiled graph. Batches are split over several infer requests so that all CPU streams work at once,
and a stream of batches keeps them busy across batch boundaries; the compiled blob is cached
(CACHE_DIR), so a second process skips compilation.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from ..engines import HINTS, PRECISIONS, inference_precision
from ..errors import EffnetError, EngineError
from ..optional import require


class OpenVINOBackend:
    """`hint` THROUGHPUT (default) vs LATENCY, B7 classify path on 2 AVX-512 cores, img/s: fp32 4.2 vs
    4.4, bf16 8.0 vs 7.8, int8 10.3 vs 9.8; under load from other processes THROUGHPUT's two 1-thread
    streams held up better. LATENCY answers a single image about twice as fast (both threads on it)."""

    name = "openvino"
    device = "cpu"
    torch_module = None  # a graph of its own: Grad-CAM builds a torch model

    def __init__(self, xml: str | os.PathLike[str], *, precision: str = "fp32", hint: str = "THROUGHPUT",
                 cache_dir: str | os.PathLike[str] | None = None, requests: int | None = None,
                 streams: int | None = None, threads: int | None = None, pin_threads: bool = True) -> None:
        """`xml`: an engine IR (uint8 RGB crops in), as openvino_graph.engine_ir builds it."""
        ov = require("openvino")
        runs = PRECISIONS["openvino"]["cpu"]
        if precision not in runs:
            raise EngineError(f"the openvino backend runs {', '.join(runs)}, not precision={precision}",
                              params=("precision",))
        if hint not in HINTS:
            raise EngineError(f"hint={hint} is not one of OpenVINO's hints: {', '.join(HINTS)}", params=("hint",))
        self.precision = precision
        core = ov.Core()
        if cache_dir is not None:
            try:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
            except OSError:  # a read-only or misplaced cache: compile without keeping the blob
                cache_dir = None
            else:
                core.set_property({"CACHE_DIR": str(cache_dir)})
        config = {"PERFORMANCE_HINT": hint,
                  "INFERENCE_PRECISION_HINT": inference_precision(
                      precision, core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))}
        if streams:  # overrides what the hint would pick
            config["NUM_STREAMS"] = streams
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if not pin_threads:
            config["ENABLE_CPU_PINNING"] = False
        self.compiled = self._compile(core, xml, config, cached=cache_dir is not None)
        data = self.compiled.input(0)
        if data.get_element_type() != ov.Type.u8:
            raise EffnetError(f"{xml} does not take uint8 crops; build it with openvino_graph.engine_ir")
        batch = data.get_partial_shape()[0]
        self.static_batch = batch.get_length() if batch.is_static else None
        self.requests = requests or self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        self.classes = self.compiled.output(0).get_partial_shape()[1].get_length()
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

    def settings(self) -> dict:
        """Hint, streams, threads, compute precision and requests as the plugin actually chose them."""
        return {**compiled_settings(self.compiled),
                "request_batch": self.static_batch if self.static_batch is not None else "dynamic"}

    def predict(self, crops: np.ndarray) -> np.ndarray:
        (probs,) = self.predict_stream([crops])
        return probs

    def predict_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """`predict` of each batch, in order, without draining the requests between batches. End to
        end from JPEGs this gained 1-2 % on B7: decode threads delay one stream more than the other,
        and a barrier per batch left the faster one idle."""
        pending: deque[_Batch] = deque()
        try:
            for crops in batches:
                batch = _Batch(len(crops), self.classes)
                pending.append(batch)
                for start, piece in self._pieces(crops):
                    batch.starting(piece)
                    self.queue.start_async({0: piece}, (batch, start), share_inputs=True)  # waits for a free request
                    while pending[0] is not batch and pending[0].done.is_set():
                        yield self._result(pending.popleft())  # earlier batches, as soon as they are done
                batch.close()
                while pending and (pending[0].done.is_set() or len(pending) > 2):
                    yield self._result(pending.popleft())
            while pending:
                yield self._result(pending.popleft())
        finally:
            self.queue.wait_all()  # requests read the batches in place: none may outlive its batch

    @property
    def capacity(self) -> int:
        return self.requests * (self.static_batch or 1)

    def submit(self, crops: np.ndarray, done: Callable[[np.ndarray | None, BaseException | None], None]) -> None:
        """`predict(crops)` started on the infer requests; `done` is called from the request that ends it.
        A server calls this for each batch as requests free up, so no stream waits for another's batch."""
        batch = _Batch(len(crops), self.classes, done)
        try:
            for start, piece in self._pieces(crops):
                batch.starting(piece)
                self.queue.start_async({0: piece}, (batch, start), share_inputs=True)  # waits for a free request
        except Exception as exc:  # noqa: BLE001 - handed to `done`, once the started pieces have ended
            batch.fail(exc)
        batch.close()

    def _pieces(self, crops: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(start, piece): the IR's batch if fixed (the tail padded), else about one piece per request."""
        crops = np.ascontiguousarray(crops, dtype=np.uint8)
        step = self.static_batch or max(1, -(-len(crops) // self.requests))
        for start in range(0, len(crops), step):
            piece = crops[start:start + step]
            if self.static_batch and len(piece) < self.static_batch:
                piece = np.concatenate([piece, np.zeros((self.static_batch - len(piece), *piece.shape[1:]), np.uint8)])
            yield start, piece

    def _result(self, batch: _Batch) -> np.ndarray:
        if not batch.done.is_set():
            self.queue.wait_all()  # raises what a failed request raised
            if not batch.done.is_set():
                raise EffnetError("an OpenVINO infer request ended without its result")
        return batch.out

    @staticmethod
    def _collect(request, userdata: tuple[_Batch, int]) -> None:
        batch, start = userdata
        batch.collect(start, request.get_output_tensor(0).data)


def compiled_settings(compiled) -> dict:
    """A compiled model's hint, streams, threads, compute precision and infer requests, as the CPU plugin
    chose them (not as asked), as plain data."""
    out: dict = {}
    for key, prop in (("hint", "PERFORMANCE_HINT"), ("streams", "NUM_STREAMS"), ("threads", "INFERENCE_NUM_THREADS"),
                      ("pinned", "ENABLE_CPU_PINNING"),
                      ("inference_precision", "INFERENCE_PRECISION_HINT"),
                      ("infer_requests", "OPTIMAL_NUMBER_OF_INFER_REQUESTS")):
        try:
            out[key] = _plain(compiled.get_property(prop))
        except RuntimeError:  # an older or different plugin: report what it has
            continue
    return out


def _plain(value):
    """An OpenVINO property value as JSON-friendly data: ints stay, enums and types become short names."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "to_string"):  # ov.Type: 'bf16', 'f32'
        return value.to_string()
    return str(value).rsplit(".", 1)[-1]  # PerformanceMode.THROUGHPUT -> THROUGHPUT


class _Batch:
    """One batch of predict_stream: its output rows, filled in by the requests' callbacks."""

    def __init__(self, images: int, classes: int,
                 on_done: Callable[[np.ndarray | None, BaseException | None], None] | None = None) -> None:
        self.out = np.empty((images, classes), np.float32)
        self.pieces: list[np.ndarray] = []  # what the requests read in place (share_inputs)
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._on_done = on_done
        self._lock = threading.Lock()
        self._open = 1  # pieces in flight, plus the submitter's until every piece has started

    def starting(self, piece: np.ndarray) -> None:
        self.pieces.append(piece)
        with self._lock:
            self._open += 1

    def collect(self, start: int, probs: np.ndarray) -> None:
        stop = min(start + len(probs), len(self.out))  # a padded tail piece has extra rows
        self.out[start:stop] = probs[:stop - start]
        self.close()

    def fail(self, error: BaseException) -> None:
        """A piece could not start: the pieces already running still end, then `on_done` hears the error."""
        self.error = error

    def close(self) -> None:
        with self._lock:
            self._open -= 1
            finished = self._open == 0
        if finished:
            self.done.set()
            if self._on_done is not None:
                self._on_done(None if self.error else self.out, self.error)
