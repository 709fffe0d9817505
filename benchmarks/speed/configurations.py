"""What each row of RESULTS.md measures: an engine at a precision with its settings, and its unit of
work (one timed round). The rows, in the table's order:

  1. PyTorch eager fp32: geffnet's model, the card's original code (engine only), in fresh worker
     processes, once with glibc's default malloc and once with malloc keeping freed memory
  2. ONNX Runtime fp32 on effnet's ONNX export (engine only, default session options)
  3. OpenVINO fp32 on the card's IR: compile_model(ir, "CPU", {INFERENCE_PRECISION_HINT: f32}), sync
  4. the LATENCY anchor, OpenVINO on the card's IR as compiled by hand: plain compile_model(ir, "CPU")
     (LATENCY hint, one stream, bf16 where the CPU has it), one request after another (benchmark_app -api sync)
  5. the THROUGHPUT anchor, OpenVINO on the same IR file as benchmark_app runs it by default:
     compile_model(ir, "CPU", {PERFORMANCE_HINT: THROUGHPUT}) fed by an AsyncInferQueue of
     OPTIMAL_NUMBER_OF_INFER_REQUESTS requests, all kept busy (the same float BGR input as row 4)
  6. effnet's default path end to end: JPEG files -> Classifier (decode threads) -> OpenVINO backend
     (bf16, THROUGHPUT hint, one image per infer request)
  7. the same effnet backend engine only (random uint8 crops), to show what decoding costs
  8. effnet's opt-in int8 model (NNCF, calibrated on the photos), engine only

Rows 2-5 take one image per call. The anchors (4, 5) are engine only, while effnet end to end (6) also
decodes its JPEGs in the same time.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from effnet import Classifier, ResolvedModel
from effnet.backends import Backend, create_backend
from effnet.bench import (
    Measurement,
    bench_end_to_end,
    bench_engine,
    measure,
    percentiles,
)
from effnet.classifier import make_decoder
from effnet.contract import INPUT_NAME
from effnet.engines import EngineOptions, resolve_engine
from effnet.export.cache import cached_ir, cached_onnx

from .inputs import Inputs
from .runner import log
from .torch_reference import MALLOC_KEEP, in_fresh_process

# Rows measured again beside a busy process (the ones the targets compare).
CONTENDED_KEYS = ("torch", "torch_keep", "ov_default", "ov_throughput", "effnet_e2e", "effnet_engine",
                  "effnet_int8")


@dataclass(frozen=True)
class Round:
    """One timed round of a configuration."""

    measurement: Measurement
    infer_latencies_s: list[float] = field(default_factory=list)  # end to end: per batch, engine only
    failed: int = 0  # end to end: unreadable files


# A configuration's unit of work: (seconds, first round?) -> what that round saw.
RoundFunction = Callable[[float, bool], Round]


@dataclass
class Configuration:
    """One row of the table: what runs (engine, precision, settings) and its rounds so far."""

    key: str
    label: str
    backend: str
    precision: str
    mode: str  # "engine" or "end-to-end"
    settings: dict
    timed_round: RoundFunction
    rounds: list[Round] = field(default_factory=list, init=False)

    def run(self, seconds: float, first: bool) -> Measurement:
        """One round of `seconds`; the first warms up (allocation, kernel selection) uncounted."""
        r = self.timed_round(seconds, first)
        self.rounds.append(r)
        return r.measurement

    def fresh(self) -> Configuration:
        """The same configuration with no rounds yet (for another condition)."""
        return dataclasses.replace(self)

    def summary(self) -> dict:
        """Totals over all rounds (throughput = all images / all time) plus per-round figures."""
        ms = [r.measurement for r in self.rounds]
        total = Measurement(sum(m.images for m in ms), sum(m.wall_s for m in ms),
                            [x for m in ms for x in m.latencies_s], sum(m.cpu_s for m in ms))
        infer = [x for r in self.rounds for x in r.infer_latencies_s]
        return {"key": self.key, "label": self.label, "backend": self.backend, "precision": self.precision,
                "mode": self.mode, "settings": self.settings, "throughput_ips": total.throughput,
                "images": total.images, "seconds": total.wall_s, "rounds_ips": [m.throughput for m in ms],
                "latency_ms": percentiles(total.latencies_s),
                "infer_latency_ms": percentiles(infer) if infer else None,
                "cpu_share": total.cpu_share, "failed": sum(r.failed for r in self.rounds)}


def stepped(step: Callable[[], int]) -> RoundFunction:
    """Rounds of `step` (one call -> images done) called back to back."""
    return lambda seconds, first: Round(measure(step, seconds, warmup=2 if first else 0))


def engine_only(backend: Backend, input_size: int, batch: int) -> RoundFunction:
    """Rounds of random crops streamed into an effnet backend, as classify_iter streams them."""
    return lambda seconds, first: Round(bench_engine(backend, input_size, batch=batch, seconds=seconds))


def end_to_end(classifier: Classifier, files: list[Path]) -> RoundFunction:
    """Rounds of files cycled through the Classifier: decode, crop, infer, top-k."""
    def run(seconds: float, first: bool) -> Round:
        r = bench_end_to_end(classifier, files, seconds=seconds, warmup=first)
        return Round(r.measurement, r.infer_latencies_s, r.failed)

    return run


class PlainOpenVINO:
    """The card's IR compiled as a user does by hand, compile_model(ir, "CPU", properties), run one
    request after another (benchmark_app -api sync): with no properties, the LATENCY anchor."""

    name = "openvino"

    def __init__(self, xml: Path, properties: dict, x: np.ndarray) -> None:
        import openvino as ov

        self.compiled = ov.Core().compile_model(str(xml), "CPU", properties)
        self.request = self.compiled.create_infer_request()
        self.x = x

    def step(self) -> int:
        self.request.infer({0: self.x})
        return len(self.x)

    def settings(self) -> dict:
        """What the plugin chose, under the keys effnet's OpenVINO backend reports."""
        from effnet.backends.openvino_backend import compiled_settings

        return {**compiled_settings(self.compiled), "api": "sync"}


class ThroughputOpenVINO:
    """The card's IR as benchmark_app runs it by default: the THROUGHPUT hint, and an AsyncInferQueue of
    the plugin's OPTIMAL_NUMBER_OF_INFER_REQUESTS requests, every one kept busy: the throughput anchor.
    A round is images finished / wall time, the last requests drained (as benchmark_app counts);
    latency is per request, from its start to its result."""

    name = "openvino"

    def __init__(self, model, x: np.ndarray, properties: dict | None = None) -> None:
        """`model`: an IR path or ov.Model; `properties`: more compile properties (INFERENCE_PRECISION_HINT)."""
        import openvino as ov

        model = str(model) if isinstance(model, Path) else model
        self.compiled = ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", **(properties or {})})
        self.queue = ov.AsyncInferQueue(self.compiled, self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.queue.set_callback(self._finished)
        self.x = x
        self.latencies: list[float] = []

    def _finished(self, request, started: float) -> None:
        self.latencies.append(time.perf_counter() - started)  # list.append is atomic: callbacks run in OV threads

    def _start(self) -> None:
        self.queue.get_idle_request_id()  # wait for a free request first, so that the stamp is its start
        self.queue.start_async({0: self.x}, time.perf_counter(), share_inputs=True)  # read only: one array for all

    def timed_round(self, seconds: float, first: bool) -> Round:
        if first:  # every request once, uncounted: allocation and kernel selection
            for _ in range(len(self.queue)):
                self._start()
            self.queue.wait_all()
        self.latencies = []
        cpu0, start = cpu_time(), time.perf_counter()
        while time.perf_counter() - start < seconds:
            self._start()
        self.queue.wait_all()
        wall = time.perf_counter() - start
        done = list(self.latencies)
        return Round(Measurement(len(done) * len(self.x), wall, done, cpu_time() - cpu0))

    def settings(self) -> dict:
        from effnet.backends.openvino_backend import compiled_settings

        return {**compiled_settings(self.compiled), "api": "async"}


def cpu_time() -> float:
    """This process's user + system CPU time (all threads, the plugin's included)."""
    t = os.times()
    return t.user + t.system


def openvino_engine(resolved: ResolvedModel, precision: str, calibration: Path | None = None) -> Backend:
    """effnet's OpenVINO backend at `precision` on the CPU, one image per infer request (int8: quantised
    on the `calibration` photos)."""
    engine = resolve_engine("openvino", precision, device="cpu", calibration=calibration,
                            options=EngineOptions(model_batch=1))
    return create_backend(resolved, engine)


def anchors(card_ir: Path, x_bgr: np.ndarray) -> list[Configuration]:
    """OpenVINO's two anchors on the same card IR file and input: LATENCY (compile_model by hand, sync) and
    THROUGHPUT (benchmark_app's default, async)."""
    plain = PlainOpenVINO(card_ir, {}, x_bgr)
    latency = {"batch": 1, **plain.settings()}
    queued = ThroughputOpenVINO(card_ir, x_bgr)
    throughput = {"batch": 1, **queued.settings()}
    return [Configuration("ov_default", "OpenVINO LATENCY hint (card IR, compile_model(ir, 'CPU'), sync)", "openvino",
                          str(latency.get("inference_precision")), "engine", latency, stepped(plain.step)),
            Configuration("ov_throughput", "OpenVINO THROUGHPUT hint (card IR, async, benchmark_app's default)",
                          "openvino", str(throughput.get("inference_precision")), "engine", throughput,
                          queued.timed_round)]


@dataclass
class Suite:
    """The configurations, and the effnet engines that the agreement section reuses."""

    configurations: list[Configuration]
    effnet_bf16: Backend
    effnet_int8: Backend | None


def build_suite(resolved: ResolvedModel, inputs: Inputs, *, batch: int, skip: Collection[str],
                work: Path) -> Suite:
    """Every row not in `skip` (torch, ort, ov_fp32, int8), its engine built and its exports cached."""
    size = resolved.input_size
    assert resolved.weights_file is not None, "the benchmark runs on a weights file (its sha256 names it)"
    log("exports (cached after the first run)")
    card_ir = cached_ir(resolved, precision="fp32", batch=1)
    rows: list[Configuration] = []
    if "torch" not in skip:
        import torch

        x_path = work / f"input-{resolved.name}-{size}.npy"
        np.save(x_path, inputs.x_norm)
        fresh = {"batch": 1, "threads": torch.get_num_threads(), "process": "fresh"}
        for key, label, malloc, env in (
                ("torch", "PyTorch eager fp32 (geffnet, the card's model)", "glibc defaults", {}),
                ("torch_keep", "PyTorch eager fp32, glibc malloc keeping memory",
                 " ".join(f"{k}={v}" for k, v in MALLOC_KEEP.items()), MALLOC_KEEP)):
            measured = in_fresh_process(resolved.name, resolved.weights_file, x_path, env)
            rows.append(Configuration(key, label, "torch", "fp32", "engine", {**fresh, "malloc": malloc},
                                      lambda seconds, first, m=measured: Round(m(seconds))))
    if "ort" not in skip:
        import onnxruntime as ort

        session = ort.InferenceSession(str(cached_onnx(resolved, batch=1)), providers=["CPUExecutionProvider"])
        rows.append(Configuration("ort", "ONNX Runtime fp32", "onnxruntime", "fp32", "engine", {"batch": 1},
                                  stepped(lambda: (session.run(None, {INPUT_NAME: inputs.x_norm}), 1)[1])))
    if "ov_fp32" not in skip:
        plain = PlainOpenVINO(card_ir, {"INFERENCE_PRECISION_HINT": "f32"}, inputs.x_bgr)
        rows.append(Configuration("ov_fp32", "OpenVINO fp32 (card IR, default hint)", "openvino", "fp32", "engine",
                                  {"batch": 1, **plain.settings()}, stepped(plain.step)))
    rows += anchors(card_ir, inputs.x_bgr)

    log("effnet default backend")
    effnet_bf16 = openvino_engine(resolved, "bf16")
    decoder = make_decoder("exact", resolved, effnet_bf16)
    classifier = Classifier.from_parts(resolved, decoder, effnet_bf16, batch)
    engine_settings = {"batch": batch, **effnet_bf16.settings()}
    rows.append(Configuration("effnet_e2e", f"effnet default, end to end from {len(inputs.files)} JPEGs", "openvino",
                              effnet_bf16.precision, "end-to-end",
                              {**engine_settings, "decode threads": decoder.workers},
                              end_to_end(classifier, inputs.files)))
    rows.append(Configuration("effnet_engine", "effnet default, engine only", "openvino", effnet_bf16.precision,
                              "engine", engine_settings, engine_only(effnet_bf16, size, batch)))
    effnet_int8 = None
    if "int8" not in skip:
        log("int8 model (NNCF, calibrated on the photos; cached after the first run)")
        effnet_int8 = openvino_engine(resolved, "int8", calibration=inputs.folder)
        rows.append(Configuration("effnet_int8", "effnet int8 (opt-in, NNCF), engine only", "openvino", "int8",
                                  "engine", {"batch": batch, **effnet_int8.settings()},
                                  engine_only(effnet_int8, size, batch)))
    return Suite(rows, effnet_bf16, effnet_int8)
