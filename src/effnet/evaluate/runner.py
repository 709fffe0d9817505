"""Running an evaluation: the labelled images through one decoder and N backends in lockstep, resumable.

Images stream through the accuracy checker's decoder (`PillowDecoder.checker`: no EXIF orientation): each
file is read once, in the decode threads; its bytes are hashed (the resume key, see store.py) and decoded,
and every backend without a stored result for that content then infers the same crops, each timed on its
own. Each column keeps its own results (store.py), so a column that joins a table runs alone while the
others are read back. An image is counted once every column has its probabilities: top-1/top-5 per column,
and top-1 agreement and max |p_k - p_0| against the first (reference) column.
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
from ..calibration import NEEDS_PHOTOS
from ..contract import num_classes, ranked
from ..datasets import Dataset, Sample, load_dataset
from ..decode import Decoded, EncodedImage, PillowDecoder
from ..engines import AUTO, PRECISIONS, EngineChoice, resolve_engine
from ..errors import EngineError, ImageError
from ..progress import NoProgress, Progress
from ..resolved import UNSET, ResolvedModel, Weights, resolve
from .report import Agreement, ConfigResult, Configuration, EvalResult
from .store import Record, ResultStore, content_digests, content_sha256, open_stores, usable_resume_dir

TOP = 5
log = logging.getLogger(__name__)


class _Tally:
    """Running counts over this dataset's images, each image counted once."""

    def __init__(self, configs: int) -> None:
        self.count = 0
        self.top1, self.top5 = [0] * configs, [0] * configs
        self.agree, self.max_dprob = [0] * (configs - 1), [0.0] * (configs - 1)  # vs configuration 0
        self.failed: dict[str, str] = {}

    def add(self, record: Record, label: int) -> None:
        """Count one image's record (see Evaluation.run) against `label`, the current dataset's."""
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


def image_record(sample: Sample, sha256: str, probs: Sequence[np.ndarray]) -> Record:
    """One image across the columns: top-5 indices and probabilities per column, and max |p_k - p_0| of each
    column after the first against the first."""
    tops = [ranked(p, TOP) for p in probs]
    return {"image": sample.key, "sha256": sha256, "label": sample.label,
            "top5": [top.tolist() for top in tops],
            "prob5": [[float(p[c]) for c in top] for p, top in zip(probs, tops)],
            "dprob": [float(np.abs(p - probs[0]).max()) for p in probs[1:]]}


class Evaluation:
    """One dataset through one or more backends in lockstep, resumable through one store per backend.

    Every image is decoded once, by the accuracy checker's decoder for `model` (its preprocessing, no EXIF
    orientation), and the crops go to each backend that has no stored result for the image's content.
    `stores` (store.py; default: memory only) are the columns' results, in the order of `backends`.
    Stored predictions are reused only where the image's content still matches (checked here, reading each
    stored image once); an image some column lacks is pending.
    """

    def __init__(self, dataset: Dataset, model: ResolvedModel, backends: Sequence[Backend],
                 stores: Sequence[ResultStore] | None = None, *, batch_size: int = 8,
                 decode_workers: int | None = None) -> None:
        if not backends:
            raise ValueError("Evaluation needs at least one backend")
        self.model = model
        self.backends = list(backends)
        self.decoder = PillowDecoder.checker(model.preprocess, workers=decode_workers)
        self.batch_size = batch_size
        self.dataset = dataset
        self.configurations = [Configuration(b.name, b.precision, b.device) for b in self.backends]
        self.stores = list(stores) if stores is not None else [ResultStore(None, num_classes()) for _ in backends]
        if len(self.stores) != len(self.backends):
            raise ValueError("Evaluation needs one store per backend")
        self.results_files = [s.results_file for s in self.stores]
        self.tally = _Tally(len(self.backends))
        self._done: set[str] = set()  # image keys counted in the tally
        self.computed = [0] * len(self.backends)  # images each column ran in this session
        in_every = set.intersection(*(s.stored_keys() for s in self.stores))
        stored = [s for s in dataset.samples if s.key in in_every]
        for sample, digest in zip(stored, content_digests([s.path for s in stored], self.decoder.workers)):
            records = [s.prediction(sample.key, digest) for s in self.stores]
            if all(records):
                probs = [s.probabilities(r) for s, r in zip(self.stores, records)]
                self._count(image_record(sample, digest, probs), sample)
        self.reused = len(self._done)  # images read back in every column instead of computed
        self._engine_seconds = [0.0] * len(self.backends)
        self.evaluated_now = 0
        self.seconds = 0.0

    @property
    def results_file(self) -> Path | None:
        """The reference column's results file (None: kept in memory only)."""
        return self.results_files[0]

    def pending(self) -> list[Sample]:
        """Images some column has no stored prediction for (for their current content); earlier decode
        failures are retried (cheaply)."""
        return [s for s in self.dataset.samples if s.key not in self._done]

    def run(self) -> Iterator[Record]:
        """Evaluate the pending images, yielding each image's record (see image_record) as it is stored.

        Closing the iterator early is an interruption: what was yielded is on disk, the rest is not.
        """
        start = time.perf_counter()
        images = [_Image(s) for s in self.pending()]
        try:
            with contextlib.ExitStack() as stack:
                appends = [stack.enter_context(s.appending()) for s in self.stores]
                batches = stack.enter_context(
                    contextlib.closing(self.decoder.batches(images, self.batch_size, _Image.content)))
                for batch in batches:
                    for d in batch:
                        if d.error is not None:  # one bad file is listed and excluded, not fatal
                            record = d.item.failure(d.error)
                            for append in appends:
                                append(record, None)
                            yield self._count(record, d.item.sample)
                    yield from self._infer(appends, [d for d in batch if d.failure is None])
        finally:
            self.seconds += time.perf_counter() - start

    def result(self) -> EvalResult:
        """The table over every image counted so far (stored and evaluated now)."""
        t = self.tally
        configs = tuple(
            ConfigResult(cfg, t.count, t.top1[i], t.top5[i],
                         self.computed[i] / s if self.computed[i] and (s := self._engine_seconds[i]) else None,
                         self.computed[i], self.results_files[i])
            for i, cfg in enumerate(self.configurations))
        agreement = tuple(
            Agreement(cfg, self.configurations[0], 100 * t.agree[i] / t.count if t.count else 0.0, t.max_dprob[i])
            for i, cfg in enumerate(self.configurations[1:]))
        dataset = f"{self.dataset.source} ({self.dataset.layout.value}, {len(self.dataset)} images)"
        return EvalResult(self.model, dataset, configs, agreement, tuple(sorted(t.failed.items())),
                          self.evaluated_now, self.seconds)

    def _infer(self, appends: list[Callable[[Record, np.ndarray | None], None]],
               batch: list[Decoded[_Image]]) -> Iterator[Record]:
        """Run each column on the images of `batch` it has no stored result for, then store and count each
        image in turn (so an interruption stores exactly what was yielded)."""
        if not batch:
            return
        stored = [[s.prediction(d.item.sample.key, d.item.sha256) for s in self.stores] for d in batch]
        crops = self.decoder.stack([d.crop for d in batch])
        fresh: list[dict[int, np.ndarray]] = [{} for _ in batch]  # per image: column -> probabilities
        for i, backend in enumerate(self.backends):
            wanted = [j for j in range(len(batch)) if stored[j][i] is None]
            if not wanted:
                continue
            t0 = time.perf_counter()
            probs = np.asarray(backend.predict(crops if len(wanted) == len(batch) else crops[wanted]),
                               dtype=np.float32)
            self._engine_seconds[i] += time.perf_counter() - t0
            self.computed[i] += len(wanted)
            for j, p in zip(wanted, probs):
                fresh[j][i] = p
        for j, d in enumerate(batch):
            sample = d.item.sample
            line = {"image": sample.key, "sha256": d.item.sha256, "label": sample.label}
            for i, p in fresh[j].items():
                appends[i](line, p)
            probs = [fresh[j][i] if i in fresh[j] else self.stores[i].probabilities(stored[j][i])
                     for i in range(len(self.backends))]
            self.evaluated_now += bool(fresh[j])
            yield self._count(image_record(sample, d.item.sha256, probs), sample)

    def _count(self, record: Record, sample: Sample) -> Record:
        if "error" not in record:
            self._done.add(sample.key)
        self.tally.add(record, sample.label)
        return record


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
    if "int8" in precisions and calibration is None:  # a column is what it says: no fallback to the default
        raise EngineError(NEEDS_PHOTOS, params=("precision", "calibration"))
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

    Each column's results go to its own folder under `resume_dir` (default: effnet's cache; where that cannot
    be written, memory only, with one notice); running again, with the same columns or others, reuses every
    stored prediction of a column whose image is unchanged (random weights are never stored). `progress`
    hears how many images are done and the running accuracy.
    """
    engines = list(engines) if engines else [resolve_engine("torch", "fp32", device="cpu")]
    dataset = (data if isinstance(data, Dataset) else load_dataset(data, annotations)).subset(limit)
    model = resolve(model, weights)
    backends = [create_backend(model, e) for e in engines]
    columns = [Configuration(b.name, b.precision, b.device) for b in backends]
    folder = None if model.random_weights else usable_resume_dir(resume_dir)
    stores = open_stores(folder, model, columns, dataset, num_classes(), [e.calibration for e in engines])
    if any(s.stored_keys() for s in stores):
        log.info("checking stored results against the images' content")
    evaluation = Evaluation(dataset, model, backends, stores, batch_size=batch_size)
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
