"""Running an evaluation: the labelled images through one decoder and N backends in lockstep, resumable.

Images stream through the accuracy checker's decoder (`PillowDecoder.checker`: no EXIF orientation): each
file is read once, in the decode threads; its bytes are hashed (the resume key, see store.py) and decoded,
and every backend then infers the same crops, each timed on its own. Each image stores, per configuration,
its top-5 indices and probabilities, plus max |p_k - p_0| over the classes against the first configuration:
all the card's table needs, at ~100 bytes per image and configuration.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..arch import DEFAULT_MODEL
from ..backends import Backend, create_backend
from ..cache_layout import RESULTS_FILE
from ..contract import ranked
from ..datasets import Dataset, Sample, load_dataset
from ..decode import Decoded, EncodedImage, PillowDecoder
from ..engines import AUTO, PRECISIONS, EngineChoice, resolve_engine
from ..errors import ImageError
from ..progress import NoProgress, Progress
from ..resolved import UNSET, ResolvedModel, Weights, resolve
from .report import Agreement, ConfigResult, Configuration, EvalResult
from .store import (
    Record,
    ResultStore,
    content_digests,
    content_sha256,
    default_resume_dir,
    run_folder,
    run_identity,
    write_run_file,
)

TOP = 5
log = logging.getLogger(__name__)


class _Tally:
    """Running counts over the records of this dataset's images, each image counted once."""

    def __init__(self, configs: int) -> None:
        self.count = 0
        self.top1, self.top5 = [0] * configs, [0] * configs
        self.agree, self.max_dprob = [0] * (configs - 1), [0.0] * (configs - 1)  # vs configuration 0
        self.failed: dict[str, str] = {}

    def add(self, record: Record, label: int) -> None:
        """Count one image's record against `label`, the current dataset's (not the stored one)."""
        if "error" in record:
            self.failed[record["image"]] = record["error"]
            return
        self.failed.pop(record["image"], None)  # an earlier failure, now readable
        self.count += 1
        tops = record["top5"]
        for i, top in enumerate(tops):
            self.top1[i] += top[0] == label
            self.top5[i] += label in top
        for i, d in enumerate(record["dprob"]):
            self.agree[i] += tops[i + 1][0] == tops[0][0]
            self.max_dprob[i] = max(self.max_dprob[i], d)


@dataclass
class _Image:
    """A pending sample on its way through the decode threads; `content` records what was decoded."""

    sample: Sample
    sha256: str | None = None

    def content(self) -> EncodedImage:
        """The file's bytes, read once: hashed here (in a decode thread), then decoded from the same bytes."""
        try:
            data = self.sample.path.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read image '{self.sample.path}': {exc.strerror or exc}") from exc
        self.sha256 = content_sha256(data)
        return EncodedImage(data, str(self.sample.path))

    def failure(self, error: str) -> Record:
        """The record of an image that cannot be decoded (listed, excluded, retried on every run)."""
        return {"image": self.sample.key, "sha256": self.sha256, "label": self.sample.label, "error": error}


class Evaluation:
    """One dataset through one or more backends in lockstep, resumable through a results file.

    Every image is decoded once, by the accuracy checker's decoder for `model` (its preprocessing, no EXIF
    orientation), and the crops go to each backend. Stored predictions are reused only where the image's
    content still matches (checked here, reading each stored image once); everything else is pending.
    """

    def __init__(self, dataset: Dataset, model: ResolvedModel, backends: Sequence[Backend],
                 results_file: str | os.PathLike | None = None, *, batch_size: int = 8,
                 decode_workers: int | None = None) -> None:
        if not backends:
            raise ValueError("Evaluation needs at least one backend")
        self.model = model
        self.backends = list(backends)
        self.decoder = PillowDecoder.checker(model.preprocess, workers=decode_workers)
        self.batch_size = batch_size
        self.dataset = dataset
        self.configurations = [Configuration(b.name, b.precision, b.device) for b in self.backends]
        self.store = ResultStore(results_file, len(self.backends))
        self.results_file = self.store.path
        self.tally = _Tally(len(self.backends))
        self._done: set[str] = set()  # image keys with a prediction counted in the tally
        stored_keys = self.store.stored_keys()
        stored = [s for s in dataset.samples if s.key in stored_keys]
        for sample, digest in zip(stored, content_digests([s.path for s in stored], self.decoder.workers)):
            record = self.store.prediction(sample.key, digest)
            if record is not None:
                self._count(record, sample)
        self.reused = len(self._done)  # predictions read back instead of computed
        self._engine_seconds = [0.0] * len(self.backends)
        self.evaluated_now = 0
        self.seconds = 0.0

    def pending(self) -> list[Sample]:
        """Images without a stored prediction for their current content; earlier decode failures are
        retried (cheaply)."""
        return [s for s in self.dataset.samples if s.key not in self._done]

    def run(self) -> Iterator[Record]:
        """Evaluate the pending images, yielding each stored record (the JSON line) as it lands.

        Closing the iterator early is an interruption: what was yielded is on disk, the rest is not.
        """
        start = time.perf_counter()
        images = [_Image(s) for s in self.pending()]
        try:
            with self.store.appending() as store, \
                    contextlib.closing(self.decoder.batches(images, self.batch_size, _Image.content)) as batches:
                for batch in batches:
                    for d in batch:
                        if d.error is not None:  # one bad file is listed and excluded, not fatal
                            yield self._keep(store, d.item.failure(d.error), d.item.sample)
                    yield from self._infer(store, [d for d in batch if d.failure is None])
        finally:
            self.seconds += time.perf_counter() - start

    def result(self) -> EvalResult:
        """The table over every image counted so far (stored and evaluated now)."""
        t = self.tally
        configs = tuple(
            ConfigResult(cfg, t.count, t.top1[i], t.top5[i],
                         self.evaluated_now / s if self.evaluated_now and (s := self._engine_seconds[i]) else None)
            for i, cfg in enumerate(self.configurations))
        agreement = tuple(
            Agreement(cfg, self.configurations[0], 100 * t.agree[i] / t.count if t.count else 0.0, t.max_dprob[i])
            for i, cfg in enumerate(self.configurations[1:]))
        dataset = f"{self.dataset.source} ({self.dataset.layout.value}, {len(self.dataset)} images)"
        return EvalResult(self.model, dataset, configs, agreement, tuple(sorted(t.failed.items())),
                          self.evaluated_now, self.seconds, self.results_file)

    def _infer(self, store: Callable[[Record], None], batch: list[Decoded[_Image]]) -> Iterator[Record]:
        if not batch:
            return
        crops = self.decoder.stack([d.crop for d in batch])
        probs = []
        for i, backend in enumerate(self.backends):
            t0 = time.perf_counter()
            probs.append(np.asarray(backend.predict(crops), dtype=np.float32))
            self._engine_seconds[i] += time.perf_counter() - t0
        tops = [ranked(p, TOP) for p in probs]
        dprob = [np.abs(p - probs[0]).max(axis=1) for p in probs[1:]]
        self.evaluated_now += len(batch)
        for j, d in enumerate(batch):
            sample = d.item.sample
            record = {"image": sample.key, "sha256": d.item.sha256, "label": sample.label,
                      "top5": [top[j].tolist() for top in tops],
                      "prob5": [[float(f"{p[j, c]:.6g}") for c in top[j]] for p, top in zip(probs, tops)],
                      "dprob": [float(f"{x[j]:.6g}") for x in dprob]}
            yield self._keep(store, record, sample)

    def _keep(self, store: Callable[[Record], None], record: Record, sample: Sample) -> Record:
        store(record)
        self._count(record, sample)
        return record

    def _count(self, record: Record, sample: Sample) -> None:
        if "error" not in record:
            self._done.add(sample.key)
        self.tally.add(record, sample.label)


# ---- one call: build, resume, run, summarise ---------------------------------------------------

def eval_engines(backends: Sequence[str], precisions: Sequence[str], *, device: str = AUTO,
                 calibration: str | os.PathLike | None = None) -> list[EngineChoice]:
    """Every backend x precision pair a backend runs on `device` ('auto': a GPU for torch when there is one),
    in the order given (the first is the reference), each resolved: `torch,openvino` x `fp32,int8` gives torch
    fp32, openvino fp32, openvino int8. Pairs no backend runs are dropped, unless that leaves nothing for a
    precision (then the backend's error is raised). Every backend is checked (installed, importable) here,
    before any data is read or weights fetched.
    """
    where = {b: resolve_engine(b, device=device).device for b in backends}  # unknown or missing: an error
    runnable = [(b, p) for b in backends for p in precisions
                if b == AUTO or p in PRECISIONS[b].get(where[b].type, ())]
    for p in precisions:
        if not any(q == p for _, q in runnable):
            resolve_engine(backends[-1], p, device=device)  # raises, e.g. "onnxruntime runs fp32, not int8"
    engines = [resolve_engine(b, p, device=str(where[b]), calibration=calibration)
               for b, p in dict.fromkeys(runnable)]
    return list(dict.fromkeys(engines))


def evaluate(data: str | os.PathLike | Dataset, *, model: str | ResolvedModel = DEFAULT_MODEL,
             weights: Weights = UNSET, engines: Sequence[EngineChoice] | None = None,
             annotations: str | os.PathLike | None = None, limit: int | None = None, batch_size: int = 8,
             resume_dir: str | os.PathLike | None = None, progress: Progress | None = None) -> EvalResult:
    """Top-1/top-5 of `model` on the labelled images in `data` (a folder or labels file, see
    load_dataset, or a loaded Dataset), one column per engine (default: torch fp32 on the CPU, the card's
    original model).

    Results go to a run folder under `resume_dir` (default: effnet's cache); running again reuses every
    stored prediction whose image is unchanged (random weights are never stored). `progress` hears how many
    images are done and the running accuracy.
    """
    engines = list(engines) if engines else [resolve_engine("torch", "fp32", device="cpu")]
    dataset = (data if isinstance(data, Dataset) else load_dataset(data, annotations)).subset(limit)
    model = resolve(model, weights)
    backends = [create_backend(model, e) for e in engines]
    columns = [Configuration(b.name, b.precision, b.device) for b in backends]
    results_file: Path | None = None
    if not model.random_weights:
        calibration = next((e.calibration for e in engines if e.calibration is not None), None)
        identity = run_identity(model, columns, calibration)
        folder = run_folder(resume_dir if resume_dir is not None else default_resume_dir(), identity)
        folder.mkdir(parents=True, exist_ok=True)
        write_run_file(folder, identity, dataset)
        results_file = folder / RESULTS_FILE
        if results_file.exists():
            log.info("checking stored results against the images' content")
    evaluation = Evaluation(dataset, model, backends, results_file, batch_size=batch_size)
    progress = progress or NoProgress()
    progress.start(len(dataset), evaluation.reused)
    try:
        for _ in evaluation.run():
            t = evaluation.tally
            if t.count:
                progress.note(f"top1 {100 * t.top1[0] / t.count:.2f} top5 {100 * t.top5[0] / t.count:.2f}")
            progress.advance()
    finally:
        progress.close()
    return evaluation.result()
