"""A served model: a decoder and a backend behind their scheduler, the protocol's view of them (metadata,
Triton config, statistics), and the one inference path HTTP and gRPC share (decode in threads -> scheduler
-> outputs).

Every infer request that names this model ends in exactly one success or one failure (with Triton's
reason), so /metrics and the statistics count what clients saw. Explanations (Grad-CAM, the page's switch)
are bounded apart from inference: a few at a time per model, no place in the inference queue.
"""
from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import numpy as np

from ..backends import Backend
from ..contract import INPUT_NAME as INPUT
from ..contract import OUTPUT_NAME as OUTPUT
from ..decode import Decoder
from ..errors import EffnetError
from ..explain import Explainer, resolve_target
from ..resolved import ResolvedModel
from .codec import InferRequest, OutputTensor, build_outputs
from .errors import DeadlineExceeded, Draining, Overloaded, ProtocolError, failure_reason
from .scheduler import Scheduler

VERSION = "1"
# Explanations one model computes at once; more are answered 503. Each holds its photo and a few overlay-sized
# maps, and competes with inference for the same cores, so the bound is small.
MAX_EXPLANATIONS = 2


class _Abandoned(Exception):
    """Raised inside an explanation whose request has already ended (answered 504, or its client left)."""


class ServedModel:
    def __init__(self, resolved: ResolvedModel, decoder: Decoder, backend: Backend, labels: Sequence[str], *,
                 max_batch_size: int = 8, max_queue_delay_ms: float = 2.0, max_queue_size: int = 64,
                 request_timeout_ms: float | None = None, decode_workers: int = 2,
                 executor: Executor | None = None, max_explanations: int = MAX_EXPLANATIONS) -> None:
        """`executor`: where the backend's calls run (see Scheduler). `max_explanations`: explanations
        computed at once (their own bound, apart from the inference queue)."""
        self.resolved = resolved
        self.decoder = decoder
        self.backend = backend
        self.labels = labels
        self.name = resolved.name
        self.size = resolved.input_size
        self.max_batch_size = max(1, max_batch_size)
        self.request_timeout = request_timeout_ms / 1000 if request_timeout_ms else None
        self.scheduler = Scheduler(backend, max_batch_size=self.max_batch_size, max_queue_delay_ms=max_queue_delay_ms,
                                   max_queue_size=max_queue_size, executor=executor)
        self.decode_threads = ThreadPoolExecutor(max(1, decode_workers), thread_name_prefix=f"effnet-decode-{self.name}")
        self.max_explanations = max(1, max_explanations)
        self.explaining = 0  # explanations admitted whose thread has not finished (the event loop's count)
        self.explain_threads = ThreadPoolExecutor(self.max_explanations,
                                                  thread_name_prefix=f"effnet-explain-{self.name}")
        self.explainer = Explainer(resolved, decoder, backend, labels)
        cfg = resolved.preprocess
        self._mean = np.asarray(cfg.mean, np.float64).reshape(1, 3, 1, 1)
        self._std = np.asarray(cfg.std, np.float64).reshape(1, 3, 1, 1)

    async def close(self) -> None:
        await self.scheduler.close()
        self.decode_threads.shutdown(wait=False, cancel_futures=True)
        self.explain_threads.shutdown(wait=False, cancel_futures=True)

    # ---- the protocol's descriptions ----
    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "versions": [VERSION], "platform": "effnet_" + self.backend.name,
                "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, 3, self.size, self.size]}],
                "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(self.labels)]}],
                "parameters": self.describe()}

    def describe(self) -> dict[str, str]:
        """Model, weights, engine, precision, device (and GPU): never the weights' file path (a server-side
        detail)."""
        out = {"model": self.name, "weights_sha256": self.resolved.weights_sha256 or "random",
               "backend": self.backend.name, "precision": self.backend.precision, "device": self.backend.device}
        gpu = self.backend.settings().get("gpu")
        return {**out, "gpu": gpu} if gpu else out

    def config(self) -> dict[str, Any]:
        """Triton's model configuration (what perf_analyzer and image_client read)."""
        s = self.scheduler
        timeout_us = int(self.request_timeout * 1e6) if self.request_timeout else 0
        return {"name": self.name, "platform": "", "backend": "effnet", "max_batch_size": self.max_batch_size,
                "input": [{"name": INPUT, "data_type": "TYPE_FP32", "format": "FORMAT_NCHW",
                           "dims": [3, self.size, self.size]}],
                "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [len(self.labels)]}],
                "dynamic_batching": {"preferred_batch_size": [self.max_batch_size],
                                     "max_queue_delay_microseconds": int(s.max_queue_delay * 1e6),
                                     "preserve_ordering": False,
                                     "default_queue_policy": {"timeout_action": "REJECT",
                                                              "default_timeout_microseconds": timeout_us,
                                                              "allow_timeout_override": True,
                                                              "max_queue_size": s.max_queue_size}},
                "parameters": {k: {"string_value": v} for k, v in self.describe().items()}}

    def statistics(self) -> dict[str, Any]:
        st = self.scheduler.stats
        dur = lambda count, ns: {"count": count, "ns": ns}  # noqa: E731
        fails = sum(st.fail.values())
        return {"name": self.name, "version": VERSION, "last_inference": st.last_inference_ms,
                "inference_count": st.inference_count, "execution_count": st.execution_count,
                "inference_stats": {"success": dur(st.success_count, st.success_ns), "fail": dur(fails, st.fail_ns),
                                    "queue": dur(st.queue_count, st.queue_ns),
                                    "compute_input": dur(st.queue_count, st.compute_input_ns),
                                    "compute_infer": dur(st.queue_count, st.compute_infer_ns),
                                    "compute_output": dur(st.queue_count, st.compute_output_ns),
                                    "cache_hit": dur(0, 0), "cache_miss": dur(0, 0)},
                "batch_stats": [{"batch_size": b, "compute_input": dur(c, 0), "compute_infer": dur(c, ns),
                                 "compute_output": dur(c, 0)} for b, (c, ns) in sorted(st.batch_sizes.items())]}

    # ---- inference ----
    def deadline(self, timeout_us: int | None, grpc_remaining: float | None = None) -> float | None:
        """The earliest of the request's `timeout`, the gRPC deadline and the server's request timeout."""
        limits = [t for t in (None if timeout_us is None or timeout_us == 0 else timeout_us / 1e6,
                              grpc_remaining, self.request_timeout) if t is not None]
        return time.monotonic() + min(limits) if limits else None

    async def infer(self, request: InferRequest, deadline: float | None,
                    gone: Callable[[], bool] = lambda: False) -> list[OutputTensor]:
        """Decode (threads), batch (scheduler), answer; counts the outcome. Raises ProtocolError,
        Overloaded, Draining, DeadlineExceeded, EngineFailed or asyncio.CancelledError."""
        started = time.perf_counter_ns()
        try:
            outputs = await self._infer(request, deadline, gone)
        except BaseException as exc:
            self.scheduler.stats.failed(failure_reason(exc), time.perf_counter_ns() - started)
            raise
        self.scheduler.stats.success_count += 1
        self.scheduler.stats.success_ns += time.perf_counter_ns() - started
        return outputs

    def failed(self, exc: BaseException) -> None:
        """Count a request that failed before it reached `infer` (a body the codec refused)."""
        self.scheduler.stats.failed(failure_reason(exc), 0)

    async def _infer(self, request: InferRequest, deadline: float | None, gone: Callable[[], bool]
                     ) -> list[OutputTensor]:
        tensor = self._input(request)
        for o in request.outputs or []:
            if o.name != OUTPUT:
                raise ProtocolError(f"unknown output {o.name!r}; the model's output is {OUTPUT!r}")
        self.scheduler.admit()
        admitted = True
        try:
            t0 = time.perf_counter_ns()
            self.scheduler.incoming += 1
            try:
                crops = await self._crops(tensor, deadline)
            finally:
                self.scheduler.incoming -= 1
            self.scheduler.stats.compute_input_ns += time.perf_counter_ns() - t0
            admitted = False  # scheduler.run releases the place from here on
            probs = await self.scheduler.run(crops, deadline, gone)
        finally:
            if admitted:
                self.scheduler.release()
        t0 = time.perf_counter_ns()
        outputs = build_outputs(request, probs, list(self.labels), OUTPUT)
        self.scheduler.stats.compute_output_ns += time.perf_counter_ns() - t0
        return outputs

    def _input(self, request: InferRequest):
        if len(request.inputs) != 1:
            raise ProtocolError(f"expected 1 input ({INPUT!r}), got {len(request.inputs)}")
        t = request.inputs[0]
        if t.name != INPUT:
            raise ProtocolError(f"unknown input {t.name!r}; the model's input is {INPUT!r}")
        s = self.size
        if t.datatype == "FP32":
            if len(t.shape) != 4 or t.shape[1:] != [3, s, s]:
                raise ProtocolError(f"input {INPUT!r}: FP32 shape must be [N, 3, {s}, {s}], got {t.shape}")
        elif t.datatype == "BYTES":
            if not (len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1)):
                raise ProtocolError(f"input {INPUT!r}: BYTES shape must be [N] (one encoded image each), "
                                    f"got {t.shape}")
        else:
            raise ProtocolError(f"input {INPUT!r}: datatype {t.datatype} is not served; send FP32 "
                                f"[N,3,{s},{s}] or BYTES [N] (encoded images)")
        n = t.shape[0]
        if n < 1:
            raise ProtocolError(f"input {INPUT!r}: batch size must be at least 1")
        if n > self.max_batch_size:
            raise ProtocolError(f"input {INPUT!r}: batch size {n} is over the model's max_batch_size "
                                f"{self.max_batch_size}")
        return t

    async def _crops(self, tensor, deadline: float | None) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if tensor.datatype == "FP32":
            return await loop.run_in_executor(self.decode_threads, self.quantize, np.asarray(tensor.data, np.float32))
        futures = [loop.run_in_executor(self.decode_threads, self._decode, i, b) for i, b in enumerate(tensor.data)]
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            crops = await asyncio.wait_for(asyncio.gather(*futures), timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded("the request's deadline passed while decoding its images") from None
        return self.decoder.stack(crops)

    def _decode(self, i: int, data: bytes) -> np.ndarray:
        try:
            return self.decoder.crop(data)
        except EffnetError as exc:
            raise ProtocolError(f"input {INPUT!r}[{i}]: {exc}") from None

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """The card's normalised NCHW floats -> the uint8 NHWC crops every engine takes: exact for
        inputs normalised from 8-bit pixels (the card's preprocessing), rounded to 8 bits otherwise."""
        if not np.isfinite(x).all():
            raise ProtocolError(f"input {INPUT!r}: FP32 data holds NaN or infinity")
        pixels = np.rint(x.astype(np.float64) * self._std + self._mean)
        return np.ascontiguousarray(np.clip(pixels, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))

    # ---- explanation (the page's switch) ----
    async def explain(self, image: bytes, target: str | None, deadline: float | None) -> dict[str, Any]:
        """Grad-CAM overlay of `target` (index or label; None: the top-1) as a JPEG data URL.

        A bad target is refused before any work (ProtocolError). At most `max_explanations` run at once (more:
        Overloaded) and none takes an inference queue place. The deadline answers 504 on time; once the
        request has ended (504, or its client left and this coroutine was cancelled), the explanation stops
        at its next step, and its place is free only when its thread is."""
        index = self.explain_target(target)
        if not self.scheduler.accepting:
            raise Draining("the server is shutting down")
        if self.explaining >= self.max_explanations:
            raise Overloaded(f"{self.max_explanations} explanations are in progress on {self.name!r}, the most it "
                             f"computes at once; retry shortly")
        ended = threading.Event()

        def check_stop() -> None:  # runs in the explanation's thread, between its steps
            if ended.is_set():
                raise _Abandoned
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded("the request's deadline passed during its explanation")

        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self.explain_threads, self._explain, image, index, check_stop)
        self.explaining += 1
        job.add_done_callback(self._explained)  # the place is given back when the thread is done
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                result = await asyncio.wait_for(asyncio.shield(job), timeout)
            except asyncio.TimeoutError:
                raise DeadlineExceeded("the request's deadline passed before its explanation") from None
        finally:
            ended.set()  # answered, timed out or cancelled: nothing more is computed for this request
        result["time_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return result

    def explain_target(self, target: str | None) -> int | None:
        """The class index a query's `target` names (None or empty: the top-1); a bad one is a ProtocolError."""
        try:
            return resolve_target(target or None, self.labels)
        except EffnetError as exc:
            raise ProtocolError(f"query parameter 'target': {exc}") from None

    def _explained(self, job: asyncio.Future) -> None:
        self.explaining -= 1
        if not job.cancelled():
            job.exception()  # retrieved: an abandoned explanation's end is no news

    def _explain(self, image: bytes, index: int | None, check_stop: Callable[[], None]) -> dict[str, Any]:
        try:
            e = self.explainer.explain(image, index, check_stop=check_stop)
        except EffnetError as exc:
            raise ProtocolError(f"input {INPUT!r}: {exc}") from None
        check_stop()
        overlay = e.overlay  # at most explain.OVERLAY_MAX_PIXELS; sent at most 1024 px a side
        overlay.thumbnail((1024, 1024))
        buf = io.BytesIO()
        overlay.save(buf, "JPEG", quality=88)
        return {"model": self.name, "index": e.index, "label": e.label, "probability": float(e.probability),
                "overlay": "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()}
