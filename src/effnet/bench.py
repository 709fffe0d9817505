"""Latency percentiles and throughput in OpenVINO benchmark_app's vocabulary, two ways:

- engine-only: random uint8 crops straight into a backend (what benchmark_app measures, plus the
  backend's own input conversion, which for OpenVINO runs inside the compiled graph);
- end to end: files from a folder, cycled, through `Classifier.classify_iter` (decode, resize, crop,
  infer, top-k), the way a user classifies a folder.

Bench wraps a backend in a timer and measures it alone or inside a Classifier; it never changes the parts
it is given. Numbers on a shared machine are only as good as the CPU the process got: the result carries
the load average and this process's CPU share so that a noisy run shows itself. The text report is the
command line's (cli/bench.py).
"""
from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .backends import Backend, WarmableBackend, create_backend, predictions
from .contract import weights_id
from .engines import EngineChoice
from .errors import EffnetError
from .machine import cores as machine_cores
from .machine import load_average, machine_info
from .resolved import ResolvedModel

if TYPE_CHECKING:
    from torch import nn

    from .classifier import Classifier

__all__ = ["BenchResult", "Measurement", "TimedBackend", "bench", "bench_end_to_end", "bench_engine", "measure",
           "percentiles"]

PERCENTILES = (50, 90, 99)


# ---- measuring --------------------------------------------------------------------------------

def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 (plus mean, min, max) in milliseconds of samples given in seconds.

    Percentiles use the nearest-rank rule (benchmark_app's: a value that was actually measured), so
    they are ordered p50 <= p90 <= p99 by construction.
    """
    if not samples_s:
        return {**{f"p{p}": float("nan") for p in PERCENTILES}, "mean": float("nan"), "min": float("nan"),
                "max": float("nan")}
    ms = np.sort(np.asarray(samples_s, dtype=np.float64)) * 1000.0
    out = {f"p{p}": float(ms[max(0, int(np.ceil(p / 100 * len(ms))) - 1)]) for p in PERCENTILES}
    out.update(mean=float(ms.mean()), min=float(ms[0]), max=float(ms[-1]))
    return out


@dataclass(frozen=True)
class Measurement:
    """What a timed loop saw: images done, wall time, per-step latencies, and the CPU it got."""

    images: int
    wall_s: float
    latencies_s: list[float]
    cpu_s: float  # this process's user + system CPU time over the run

    @property
    def throughput(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_share(self) -> float:
        """Fraction of the machine's cores this process kept busy: well under 1 on a 2-core box
        means someone else had the CPU (or the pipeline starved)."""
        cores = machine_cores()
        return self.cpu_s / (self.wall_s * cores) if self.wall_s > 0 else 0.0


def _cpu_time() -> float:
    t = os.times()
    return t.user + t.system


def measure(step: Callable[[], int], seconds: float, *, warmup: int = 1, min_steps: int = 1) -> Measurement:
    """Call `step` (one unit of work returning how many images it did) until `seconds` have passed.

    `warmup` calls come first and are not counted (first inferences allocate and tune).
    """
    for _ in range(warmup):
        step()
    latencies: list[float] = []
    images = 0
    cpu0 = _cpu_time()
    start = now = time.perf_counter()
    while now - start < seconds or len(latencies) < min_steps:
        t0 = time.perf_counter()
        images += step()
        now = time.perf_counter()
        latencies.append(now - t0)
    return Measurement(images, now - start, latencies, _cpu_time() - cpu0)


def bench_engine(backend: Backend, input_size: int, *, batch: int = 1, seconds: float = 20.0,
                 warmup: int = 1, seed: int = 0) -> Measurement:
    """Engine-only: the same random (batch, S, S, 3) uint8 crops into `backend`, over and over, fed
    as `Classifier.classify_iter` feeds it (no pause between batches where the engine pipelines).

    Latency is per batch, from handing it to the engine to its probabilities coming back.
    """
    crops = np.random.default_rng(seed).integers(0, 256, (batch, input_size, input_size, 3), dtype=np.uint8)
    timed = TimedBackend(backend)
    stream = timed.predict_stream(itertools.repeat(crops))
    try:
        m = measure(lambda: (next(stream), batch)[1], seconds, warmup=warmup)
    finally:
        stream.close()
    return Measurement(m.images, m.wall_s, timed.calls[-len(m.latencies_s):], m.cpu_s)


class TimedBackend:
    """A backend wrapped to record each batch's inference latency: from handing it to the engine to its
    probabilities coming back (streamed batches overlap, as in real use)."""

    def __init__(self, backend: Backend) -> None:
        self.inner = backend
        self.name = backend.name
        self.precision = backend.precision
        self.device = backend.device
        self.calls: list[float] = []

    @property
    def torch_module(self) -> nn.Module | None:
        return self.inner.torch_module

    def settings(self) -> dict:
        return self.inner.settings()

    def predict(self, crops: Any) -> np.ndarray:
        (probs,) = self.predict_stream([crops])
        return probs

    def predict_stream(self, batches: Iterable[Any]) -> Iterator[np.ndarray]:
        handed: deque[float] = deque()

        def timed() -> Iterator[np.ndarray]:
            for crops in batches:
                handed.append(time.perf_counter())
                yield crops

        for probs in predictions(self.inner, timed()):
            self.calls.append(time.perf_counter() - handed.popleft())
            yield probs


@dataclass
class EndToEnd:
    """What an end-to-end run saw: the pipeline's figures, the engine's own, and the files it could not read."""

    measurement: Measurement  # latencies: per image, from handing its path to the pipeline to its result
    infer_latencies_s: list[float]  # per batch, from handing it to the engine to its probabilities
    errors: dict[str, str]  # unreadable file -> the message (each reported once, however often it cycled)
    failed: int  # outcomes that were errors, cycles included


def bench_end_to_end(classifier: Classifier, files: Sequence[str | os.PathLike[str]], *, seconds: float = 20.0,
                     warmup: bool = True, top: int = 5) -> EndToEnd:
    """End to end: cycle over `files` through `classifier`'s decoder and its backend, wrapped in a timer,
    for `seconds` (the classifier itself is left as it is).

    Decode runs in the decoder's worker threads while the backend infers, as in real use. A file
    that cannot be read is counted and reported, and the run goes on.
    """
    from .classifier import Classifier

    files = [os.fspath(f) for f in files]
    if not files:
        raise EffnetError("no files to benchmark")
    timed = TimedBackend(classifier.backend)
    classifier = Classifier.from_parts(classifier.resolved, classifier.decoder, timed, classifier.batch_size)
    if warmup:  # one batch, so first-call costs (allocation, kernel selection) stay out of the numbers
        for _ in classifier.classify_iter([files[i % len(files)] for i in range(classifier.batch_size)], top=top):
            pass
    timed.calls.clear()
    handed: deque[float] = deque()  # when each source was pulled into the pipeline; outcomes come in order
    deadline = [0.0]

    def sources() -> Iterator[str]:
        i = 0
        while time.perf_counter() < deadline[0]:
            handed.append(time.perf_counter())
            yield files[i % len(files)]
            i += 1

    latencies: list[float] = []
    errors: dict[str, str] = {}
    failed = images = 0
    cpu0 = _cpu_time()
    start = time.perf_counter()
    deadline[0] = start + seconds
    for outcome in classifier.classify_iter(sources(), top=top):
        done = time.perf_counter()
        began = handed.popleft()
        if outcome.error is not None:
            failed += 1
            errors.setdefault(outcome.source, outcome.error)
            continue
        images += 1
        latencies.append(done - began)
    wall = time.perf_counter() - start
    return EndToEnd(Measurement(images, wall, latencies, _cpu_time() - cpu0), list(timed.calls), errors, failed)


# ---- the result -------------------------------------------------------------------------------

@dataclass
class BenchResult:
    """One benchmark run; `to_dict()` is what `effnet bench --json` prints."""

    mode: str  # "engine" (random crops) or "end-to-end" (files)
    model: str
    weights_sha256: str | None  # the weights' identity, as in the export caches; None: random weights
    backend: str
    precision: str
    device: str  # cpu or cuda:N (the GPU's name is in `engine`)
    batch: int  # images per backend call
    throughput_ips: float
    latency_ms: dict[str, float]  # engine: per batch, handed -> result; end-to-end: per image, file handed -> result
    images: int
    seconds: float
    engine: dict = field(default_factory=dict)  # hint, streams, threads as the engine set them
    infer_latency_ms: dict[str, float] | None = None  # end-to-end: per batch, handed to the engine -> result
    files: int | None = None
    failed: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    decode: str | None = None  # end to end: exact (Pillow) or gpu
    decode_workers: int | None = None
    cpu_share: float | None = None
    load_before: float | None = None
    load_after: float | None = None
    machine: dict = field(default_factory=dict)

    @property
    def weights_id(self) -> str:
        """The weights in a report line: the sha256's first 16 hex digits, or 'random'."""
        return weights_id(self.weights_sha256)

    @property
    def streams(self) -> int | None:
        return self.engine.get("streams")

    @property
    def threads(self) -> int | None:
        return self.engine.get("threads")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["streams"], out["threads"] = self.streams, self.threads
        return out


def bench(resolved: ResolvedModel, engine: EngineChoice | Backend, *, batch: int | None = None,
          seconds: float = 20.0, files: Sequence[str | os.PathLike[str]] | None = None, decode: str = "exact",
          decode_workers: int | None = None) -> BenchResult:
    """Benchmark `resolved` on `engine` (an EngineChoice, built here, or a ready Backend): engine-only, or end
    to end over `files` (cycled). The result names the weights by their sha256, as every other output does.

    `batch` is the number of images per backend call (default: the engine's, 8 on CPUs, 64 on a GPU); an
    OpenVINO backend spreads one call over its infer requests (one per stream), so `batch` >= streams keeps
    every stream busy. `decode`: how files are decoded end to end ("exact" Pillow, or "gpu").
    """
    if seconds <= 0:
        raise EffnetError(f"seconds={seconds}: give a positive duration", params=("seconds",))
    load_before = load_average()
    if isinstance(engine, EngineChoice):
        batch = batch or engine.batch_size
        backend = create_backend(resolved, engine)
    else:
        backend = engine
    if isinstance(backend, WarmableBackend):  # compiling each batch shape is no part of the measurement
        backend.warm_up()
    batch = batch or 8
    settings = backend.settings()
    common = {"model": resolved.name, "weights_sha256": resolved.weights_sha256, "backend": backend.name,
              "precision": backend.precision, "device": backend.device, "batch": batch, "engine": settings}
    if files is None:
        m = bench_engine(backend, resolved.input_size, batch=batch, seconds=seconds)
        result = BenchResult(mode="engine", throughput_ips=m.throughput, latency_ms=percentiles(m.latencies_s),
                             images=m.images, seconds=m.wall_s, cpu_share=m.cpu_share, **common)
    else:
        from .classifier import Classifier, make_decoder

        decoder = make_decoder(decode, resolved, backend, workers=decode_workers)
        classifier = Classifier.from_parts(resolved, decoder, backend, batch)
        run = bench_end_to_end(classifier, files, seconds=seconds)
        m = run.measurement
        result = BenchResult(mode="end-to-end", throughput_ips=m.throughput, latency_ms=percentiles(m.latencies_s),
                             images=m.images, seconds=m.wall_s, cpu_share=m.cpu_share,
                             infer_latency_ms=percentiles(run.infer_latencies_s), files=len(files),
                             failed=run.failed, errors=run.errors, decode=decoder.describe()["decode"],
                             decode_workers=decoder.workers, **common)
    result.load_before, result.load_after = load_before, load_average()
    result.machine = machine_info()
    return result
