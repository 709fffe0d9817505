"""Top-1/top-5 accuracy on ImageNet-style data: the card's table, one column per backend/precision.

Storage and resume: every finished image is appended at once, as one JSON line, to
``<resume dir>/<run>/results.jsonl``, where ``<run>`` hashes model, weights, configurations and the
dataset's (key, label) list. A restarted run reads that file, skips every image already there and
counts each image once (records are keyed by the image's relative path).

Comparing configurations: they run in lockstep on the same decoded batch, and each image stores, per
configuration, its top-5 indices and probabilities, plus max |p_k - p_0| over the 1000 classes
against the first configuration. That is all the card's table needs (accuracies, top-1 agreement,
max |dprob|) at ~100 bytes per image and configuration, instead of 4 kB per 1000-vector.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .arch import DEFAULT_MODEL
from .classifier import Classifier, bounded_map
from .datasets import Dataset, Sample, load_dataset
from .errors import EffnetError
from .resolved import ResolvedModel, Weights, resolve
from .weights import cache_dir

TOP = 5
RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
_Z95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class Configuration:
    """One column of the table: an inference engine and the precision it runs at."""

    backend: str = "torch"
    precision: str = "fp32"

    def __str__(self) -> str:
        return f"{self.backend} {self.precision}"


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion, in percent; sound near 0 % and 100 % and for small n."""
    if n == 0:
        return (0.0, 100.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


@dataclass(frozen=True)
class ConfigResult:
    configuration: Configuration
    count: int
    top1_correct: int
    top5_correct: int
    throughput: float | None  # engine-only images/s in this session; None when nothing ran

    @property
    def top1(self) -> float:
        return 100 * self.top1_correct / self.count if self.count else 0.0

    @property
    def top5(self) -> float:
        return 100 * self.top5_correct / self.count if self.count else 0.0

    @property
    def top1_interval(self) -> tuple[float, float]:
        return wilson_interval(self.top1_correct, self.count)

    @property
    def top5_interval(self) -> tuple[float, float]:
        return wilson_interval(self.top5_correct, self.count)


@dataclass(frozen=True)
class Agreement:
    """How far one configuration is from the first (reference) one, image by image."""

    configuration: Configuration
    reference: Configuration
    top1: float  # percent of images with the same top-1 class
    max_abs_dprob: float  # over all images and all 1000 classes


@dataclass(frozen=True)
class EvalResult:
    """Accuracies in percent; the first configuration is the reference the others are compared with."""

    model: ResolvedModel
    dataset: str
    configurations: tuple[ConfigResult, ...]
    agreement: tuple[Agreement, ...]
    failed: tuple[tuple[str, str], ...]  # (image, why) for images that could not be decoded: excluded
    evaluated_now: int  # images run in this session; the rest were read back from the results file
    seconds: float
    results_file: Path | None = None

    @property
    def count(self) -> int:
        return self.configurations[0].count

    @property
    def top1(self) -> float:
        return self.configurations[0].top1

    @property
    def top5(self) -> float:
        return self.configurations[0].top5

    @property
    def card(self) -> tuple[float, float] | None:
        """(top-1, top-5) the OMZ card publishes, where the weights are the card's file."""
        card = self.model.card
        return (card.top1, card.top5) if card and self.model.official_weights else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: count/top1/top5 of the reference at the top, every configuration below."""
        def config(c: ConfigResult) -> dict[str, Any]:
            return {"backend": c.configuration.backend, "precision": c.configuration.precision,
                    "count": c.count, "top1": round(c.top1, 4), "top5": round(c.top5, 4),
                    "top1_ci95": [round(v, 4) for v in c.top1_interval],
                    "top5_ci95": [round(v, 4) for v in c.top5_interval],
                    "throughput": round(c.throughput, 2) if c.throughput else None}
        card = self.card
        return {
            **{k: v for k, v in config(self.configurations[0]).items() if k not in ("backend", "precision")},
            "model": self.model.name, "weights_sha256": self.model.weights_sha256, "dataset": self.dataset,
            "card": {"top1": card[0], "top5": card[1]} if card else None,
            "configurations": [config(c) for c in self.configurations],
            "agreement": [{"backend": a.configuration.backend, "precision": a.configuration.precision,
                           "reference": str(a.reference), "top1_agreement": round(a.top1, 4),
                           "max_abs_dprob": a.max_abs_dprob} for a in self.agreement],
            "failed": [{"image": key, "error": why} for key, why in self.failed],
            "evaluated_now": self.evaluated_now, "seconds": round(self.seconds, 3),
            "results_file": os.fspath(self.results_file) if self.results_file else None,
        }

    def to_markdown(self, *, max_failed: int | None = None) -> str:
        """The card's table (metrics down, configurations across, card values last) and notes."""
        card = self.card
        ref = self.configurations[0].configuration
        rows = [["metric", *(str(c.configuration) for c in self.configurations), "card"]]
        rows.append(["images", *(str(c.count) for c in self.configurations), "50000" if card else "n/a"])
        cards = card or (None, None)
        rows.append(["top-1 %", *(_percent_cell(c.top1_correct, c.count) for c in self.configurations),
                     f"{cards[0]:.2f}" if card else "n/a"])
        rows.append(["top-5 %", *(_percent_cell(c.top5_correct, c.count) for c in self.configurations),
                     f"{cards[1]:.2f}" if card else "n/a"])
        rates = (f"{c.throughput:.1f}" if c.throughput else "n/a" for c in self.configurations)
        rows.append(["engine img/s", *rates, ""])
        if self.agreement:
            rows.append([f"top-1 agreement with {ref} %", "-", *(f"{a.top1:.2f}" for a in self.agreement), ""])
            rows.append([f"max abs dprob vs {ref}", "-", *(f"{a.max_abs_dprob:.2e}" for a in self.agreement), ""])
        lines = [f"**{self.model.name}** (weights {self.model.weights_id}) on {self.dataset}; top-1/top-5 with 95 % Wilson intervals", "", *_table(rows), ""]
        rate = ""
        if self.evaluated_now and self.seconds:
            rate = f", {self.evaluated_now / self.seconds:.1f} img/s end-to-end"
        lines.append(f"{self.count} images counted, {self.evaluated_now} evaluated in this run{rate}.")
        if self.results_file:
            lines.append(f"Per-image results: {self.results_file}")
        if self.failed:
            lines.append(f"{len(self.failed)} unreadable image(s) excluded:")
            shown = self.failed if max_failed is None else self.failed[:max_failed]
            lines += [f"- {key}: {why}" for key, why in shown]
            if len(shown) < len(self.failed):
                lines.append(f"- ... and {len(self.failed) - len(shown)} more (see --json)")
        return "\n".join(lines) + "\n"


def _percent_cell(successes: int, n: int) -> str:
    low, high = wilson_interval(successes, n)
    return f"{100 * successes / n if n else 0.0:.2f} [{low:.2f}, {high:.2f}]"


def _table(rows: list[list[str]]) -> list[str]:
    """A Markdown table padded to equal widths, so it reads the same on a terminal."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"
    return [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows[1:])]


class _Tally:
    """Running counts over stored records; each image key is counted at most once."""

    def __init__(self, configs: int) -> None:
        self.count = 0
        self.top1, self.top5 = [0] * configs, [0] * configs
        self.agree, self.max_dprob = [0] * (configs - 1), [0.0] * (configs - 1)  # vs configuration 0
        self.failed: dict[str, str] = {}

    def add(self, record: dict[str, Any], label: int) -> None:
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


class Evaluation:
    """One dataset through one or more classifiers in lockstep, resumable through a results file.

    The classifiers must share the model's preprocessing (each image is decoded once for all of
    them) and must not apply EXIF orientation: the accuracy checker does not, and neither does this.
    """

    def __init__(self, dataset: Dataset, classifiers: Classifier | Sequence[Classifier],
                 results_file: str | os.PathLike | None = None) -> None:
        self.classifiers = [classifiers] if isinstance(classifiers, Classifier) else list(classifiers)
        if not self.classifiers:
            raise ValueError("Evaluation needs at least one classifier")
        lead = self.classifiers[0]
        if any(c.config != lead.config for c in self.classifiers):
            raise ValueError("all classifiers of one evaluation must share the model's preprocessing")
        if any(c.exif_transpose for c in self.classifiers):
            raise ValueError("the accuracy checker ignores EXIF orientation: use Classifier(..., exif_transpose=False)")
        self.dataset = dataset
        self.configurations = [Configuration(c.backend.name, c.backend.precision) for c in self.classifiers]
        self.results_file = Path(results_file) if results_file is not None else None
        self._records = _read_records(self.results_file, len(self.classifiers)) if self.results_file else {}
        self.tally = _Tally(len(self.classifiers))
        for s in dataset.samples:
            if s.key in self._records:
                self.tally.add(self._records[s.key], s.label)
        self._engine_seconds = [0.0] * len(self.classifiers)
        self.evaluated_now = 0
        self.seconds = 0.0

    def pending(self) -> list[Sample]:
        """Images without a stored prediction; earlier decode failures are retried (cheaply)."""
        return [s for s in self.dataset.samples if "top5" not in self._records.get(s.key, {})]

    def run(self) -> Iterator[dict[str, Any]]:
        """Evaluate the pending images, yielding each stored record (the JSON line) as it lands.

        Closing the iterator early is an interruption: what was yielded is on disk, the rest is not.
        """
        lead = self.classifiers[0]
        start = time.perf_counter()
        out = self.results_file.open("a", encoding="utf-8") if self.results_file else contextlib.nullcontext()
        try:
            with out as sink, ThreadPoolExecutor(lead.decode_workers) as pool:
                ahead = 2 * lead.batch_size + lead.decode_workers  # decode next batch while this one infers
                batch: list[tuple[Sample, np.ndarray]] = []
                for sample, crop in bounded_map(pool, self._decode, self.pending(), ahead):
                    if isinstance(crop, str):
                        yield self._store(sink, {"image": sample.key, "label": sample.label, "error": crop}, sample)
                    else:
                        batch.append((sample, crop))
                    if len(batch) == lead.batch_size:
                        yield from self._infer(sink, batch)
                        batch = []
                yield from self._infer(sink, batch)
        finally:
            self.seconds += time.perf_counter() - start

    def result(self) -> EvalResult:
        t = self.tally
        configs = tuple(
            ConfigResult(cfg, t.count, t.top1[i], t.top5[i],
                         self.evaluated_now / s if self.evaluated_now and (s := self._engine_seconds[i]) else None)
            for i, cfg in enumerate(self.configurations))
        agreement = tuple(
            Agreement(cfg, self.configurations[0], 100 * t.agree[i] / t.count if t.count else 0.0, t.max_dprob[i])
            for i, cfg in enumerate(self.configurations[1:]))
        dataset = f"{self.dataset.source} ({self.dataset.layout.value}, {len(self.dataset)} images)"
        return EvalResult(self.classifiers[0].resolved, dataset, configs, agreement, tuple(sorted(t.failed.items())),
                          self.evaluated_now, self.seconds, self.results_file)

    def _decode(self, sample: Sample) -> tuple[Sample, np.ndarray | str]:
        try:
            return sample, self.classifiers[0].crop(sample.path)
        except (EffnetError, OSError) as exc:  # one bad file is listed and excluded, not fatal
            return sample, str(exc)

    def _infer(self, sink: IO[str] | None, batch: list[tuple[Sample, np.ndarray]]) -> Iterator[dict[str, Any]]:
        if not batch:
            return
        crops = np.stack([crop for _, crop in batch])
        probs = []
        for i, classifier in enumerate(self.classifiers):
            t0 = time.perf_counter()
            probs.append(np.asarray(classifier.backend.predict(crops), dtype=np.float32))
            self._engine_seconds[i] += time.perf_counter() - t0
        tops = [np.argsort(-p, axis=1, kind="stable")[:, :TOP] for p in probs]
        dprob = [np.abs(p - probs[0]).max(axis=1) for p in probs[1:]]
        self.evaluated_now += len(batch)
        for j, (sample, _) in enumerate(batch):
            record = {"image": sample.key, "label": sample.label,
                      "top5": [top[j].tolist() for top in tops],
                      "prob5": [[float(f"{p[j, c]:.6g}") for c in top[j]] for p, top in zip(probs, tops)],
                      "dprob": [float(f"{d[j]:.6g}") for d in dprob]}
            yield self._store(sink, record, sample)

    def _store(self, sink: IO[str] | None, record: dict[str, Any], sample: Sample) -> dict[str, Any]:
        if sink is not None:
            sink.write(json.dumps(record, separators=(",", ":")) + "\n")
            sink.flush()  # per image: an interruption loses nothing that was reported
        self._records[sample.key] = record
        self.tally.add(record, sample.label)
        return record


def _read_records(path: Path, configs: int) -> dict[str, dict[str, Any]]:
    """Stored records by image key (the last one wins); a torn last line from a kill is cut off."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as f:  # so the next append starts on a fresh line
            f.truncate(len(complete))
    records: dict[str, dict[str, Any]] = {}
    for line in complete.decode("utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if _well_formed(record, configs):
                records[record["image"]] = record
    return records


def _well_formed(record: Any, configs: int) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("image"), str):
        return False
    if "error" in record:
        return True
    tops, dprob = record.get("top5"), record.get("dprob")
    return (isinstance(tops, list) and len(tops) == configs and all(isinstance(t, list) and t for t in tops)
            and isinstance(dprob, list) and len(dprob) == configs - 1)


# ---- one call: build, resume, run, summarise ---------------------------------------------------

def default_resume_dir() -> Path:
    return cache_dir() / "eval"


def run_directory(resume_dir: str | os.PathLike, model: ResolvedModel,
                  configurations: Sequence[Configuration], dataset: Dataset,
                  calibration: str | os.PathLike | None = None) -> Path:
    """Where a run's results live: one folder per (model, weights, configurations, full dataset).

    The dataset part is the fingerprint before --limit, so runs with different limits share results.
    """
    int8 = any(c.precision == "int8" for c in configurations)
    identity = {"format": 2, "model": model.name, "weights": _weights_identity(model),
                "configurations": [[c.backend, c.precision] for c in configurations],
                "calibration": os.fspath(Path(calibration).resolve()) if int8 and calibration else None,
                "dataset": dataset.fingerprint(), "preprocess": "omz-accuracy-checker, no EXIF"}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    columns = "+".join(f"{c.backend}-{c.precision}" for c in configurations)
    return Path(resume_dir) / f"{model.name}-{columns}-{digest}"


def _weights_identity(model: ResolvedModel) -> str:
    """The weights' sha256; random init differs each time, so it never resumes."""
    return model.weights_sha256 or f"random-{uuid.uuid4()}"


def configurations(backends: Sequence[str], precisions: Sequence[str]) -> list[Configuration]:
    """Every backend x precision pair an engine runs, in the order given (the first is the reference).

    `--backend torch,openvino --precision fp32,int8` gives torch fp32, openvino fp32, openvino int8:
    pairs no engine runs are dropped, unless that leaves nothing (then the engine's error is raised).
    """
    from .backends import PRECISIONS, resolve_kind

    for b in backends:
        resolve_kind(b)  # an unknown engine name is an error, never silently dropped
    runnable = [(b, p) for b in backends for p in precisions if b == "auto" or p in PRECISIONS[b]]
    for p in precisions:
        if not any(q == p for _, q in runnable):
            resolve_kind(backends[-1], p)  # raises, e.g. "onnxruntime runs fp32, not int8"
    return list(dict.fromkeys(Configuration(b, p) for b, p in runnable))


def build_classifier(model: ResolvedModel, configuration: Configuration = Configuration(),
                     batch_size: int = 8, calibration: str | os.PathLike | None = None) -> Classifier:
    """A Classifier for one column of the table, preprocessing exactly as the accuracy checker does."""
    return Classifier(model, backend=configuration.backend, precision=configuration.precision,
                      calibration=calibration, batch_size=batch_size, exif_transpose=False)


def evaluate(data: str | os.PathLike, *, model: str | ResolvedModel = DEFAULT_MODEL, weights: Weights = "imagenet",
             configurations: Sequence[Configuration] = (Configuration(),),
             annotations: str | os.PathLike | None = None, limit: int | None = None, batch_size: int = 8,
             calibration: str | os.PathLike | None = None, resume_dir: str | os.PathLike | None = None,
             progress: bool | None = None) -> EvalResult:
    """Top-1/top-5 of `model` on the labelled images in `data`, one result per configuration.

    Results go to a run folder under `resume_dir` (default: effnet's cache); running the same command
    again continues where it stopped. `progress` (default: stderr is a terminal) shows a tqdm bar.
    `calibration` is the image folder int8 models are quantised with.
    """
    full = load_dataset(data, annotations)
    dataset = full.subset(limit)
    model = resolve(model, weights)
    classifiers = [build_classifier(model, c, batch_size, calibration) for c in configurations]
    resolved = [Configuration(c.backend.name, c.backend.precision) for c in classifiers]  # "auto" -> its engine
    folder = run_directory(resume_dir if resume_dir is not None else default_resume_dir(),
                           model, resolved, full, calibration)
    folder.mkdir(parents=True, exist_ok=True)
    _write_run_file(folder / RUN_FILE, model, resolved, full)
    evaluation = Evaluation(dataset, classifiers, folder / RESULTS_FILE)
    show = sys.stderr.isatty() if progress is None else progress
    from tqdm import tqdm

    done = len(dataset) - len(evaluation.pending())
    with tqdm(total=len(dataset), initial=done, unit="img", file=sys.stderr, disable=not show, desc="eval") as bar:
        for _ in evaluation.run():
            t = evaluation.tally
            if t.count:
                bar.set_postfix_str(f"top1 {100 * t.top1[0] / t.count:.2f} top5 {100 * t.top5[0] / t.count:.2f}",
                                    refresh=False)
            bar.update()
    return evaluation.result()


def _write_run_file(path: Path, model: ResolvedModel, configurations: Sequence[Configuration],
                    dataset: Dataset) -> None:
    """A human-readable note of what the folder holds (the folder name is only a hash)."""
    if path.exists():
        return
    path.write_text(json.dumps({
        "model": model.name, "weights_sha256": model.weights_sha256,
        "configurations": [str(c) for c in configurations], "dataset": os.fspath(dataset.source),
        "layout": dataset.layout.value, "images": len(dataset), "fingerprint": dataset.fingerprint(),
    }, indent=2) + "\n", encoding="utf-8")
