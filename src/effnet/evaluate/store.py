"""The resume store of `effnet eval`: a run folder per (model, weights, configurations, calibration set),
and in it ``results.jsonl``, one JSON line per image, appended and flushed as each image finishes, and
``run.json``, the run's identity plus the dataset it last ran on (what `effnet cache` shows).

A stored prediction is reused only for the same image key *and* the same content: each record holds the
sha256 of the file's bytes, the very bytes its crop was decoded from. An image replaced under the same
name (same label, same folder layout) is recomputed, never mixed with the old answer. The label is not
part of the key: predictions do not depend on it, and the current dataset's label is what is counted.

Records (format 3), one per line; the last one for an (image, sha256) pair wins:
  {"image": key, "sha256": hex, "label": int, "top5": [[5 class indices] per configuration],
   "prob5": [[5 probabilities] per configuration], "dprob": [max |p_k - p_0| per configuration after the first]}
  {"image": key, "sha256": hex or null, "label": int, "error": message}   (not decodable: retried every run)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..cache_layout import RESULTS_FILE, RUN_FILE, CacheLayout
from ..calibration import CalibrationSet
from ..datasets import Dataset
from ..resolved import ResolvedModel
from .report import Configuration

FORMAT = 3  # in every run folder's identity: results of an older record format are never read
Record = dict[str, Any]


def default_resume_dir() -> Path:
    return CacheLayout.default().eval


def content_sha256(data: bytes) -> str:
    """The identity of an image for resuming: the sha256 of its file's bytes."""
    return hashlib.sha256(data).hexdigest()


def file_content_sha256(path: Path) -> str | None:
    """content_sha256 of a file, or None where it cannot be read (it is then evaluated, and reported)."""
    try:
        return content_sha256(path.read_bytes())
    except OSError:
        return None


def content_digests(paths: Sequence[Path], workers: int) -> list[str | None]:
    """file_content_sha256 of each path, read in `workers` threads (reading and hashing release the GIL)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(file_content_sha256, paths))


def run_identity(model: ResolvedModel, configurations: Sequence[Configuration],
                 calibration: CalibrationSet | None = None) -> dict[str, Any]:
    """Everything besides the images that determines a stored prediction, as plain data.

    `configurations` are what the engines run (no "auto", no default precision); a column's device is named
    where it is not the CPU. Random weights are never stored, so they get an identity nothing else shares.
    """
    int8 = any(c.precision == "int8" for c in configurations)
    return {"format": FORMAT, "model": model.name, "weights_sha256": model.weights_sha256 or f"random-{uuid.uuid4()}",
            "configurations": [[c.backend, c.precision] + ([c.device] if c.device != "cpu" else [])
                               for c in configurations],
            "calibration_sha256": calibration.sha256 if int8 and calibration else None,
            "preprocess": "omz-accuracy-checker, no EXIF"}


def run_directory(resume_dir: str | os.PathLike, model: ResolvedModel, configurations: Sequence[Configuration],
                  calibration: CalibrationSet | None = None) -> Path:
    """The folder of one run identity, shared by every dataset and subset (each record carries its
    image's content digest)."""
    return run_folder(resume_dir, run_identity(model, configurations, calibration))


def run_folder(resume_dir: str | os.PathLike, identity: dict[str, Any]) -> Path:
    """``<resume_dir>/<model>-<columns>-<hash of the identity>``: readable, and unique per identity."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    columns = "+".join("-".join(column) for column in identity["configurations"]).replace(":", "")
    return Path(resume_dir) / f"{identity['model']}-{columns}-{digest}"


def write_run_file(folder: Path, identity: dict[str, Any], dataset: Dataset) -> None:
    """A human-readable note of what the folder holds (its name ends in a hash): the identity, and the
    dataset this run evaluates (the folder is shared by every dataset and subset of the same identity)."""
    note = {**identity, "dataset": str(dataset.source), "images": len(dataset)}
    tmp = folder / f".{RUN_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / RUN_FILE)


class ResultStore:
    """The per-image records of one run: read back once, then appended to as images finish.

    `path` None keeps records in memory only (random weights, or an Evaluation without a file).
    """

    def __init__(self, path: str | os.PathLike | None, configs: int) -> None:
        self.path = Path(path) if path is not None else None
        self.configs = configs
        self._predictions: dict[tuple[str, str], Record] = {}  # (image key, content sha256) -> record
        if self.path is not None and self.path.exists():
            for record in read_records(self.path, configs):
                self._index(record)

    def stored_keys(self) -> set[str]:
        """Image keys with a stored prediction for some content (to be checked against the files)."""
        return {key for key, _ in self._predictions}

    def prediction(self, key: str, sha256: str | None) -> Record | None:
        """The stored prediction for this image with exactly this content, if any."""
        return self._predictions.get((key, sha256)) if sha256 else None

    @contextlib.contextmanager
    def appending(self) -> Iterator[Callable[[Record], None]]:
        """A function that stores one record: appended and flushed at once, so an interruption loses
        nothing that was reported."""
        with (self.path.open("a", encoding="utf-8") if self.path else contextlib.nullcontext()) as sink:
            def store(record: Record) -> None:
                if sink is not None:
                    sink.write(json.dumps(record, separators=(",", ":")) + "\n")
                    sink.flush()
                self._index(record)
            yield store

    def _index(self, record: Record) -> None:
        if "top5" in record:
            self._predictions[record["image"], record["sha256"]] = record


def read_records(path: Path, configs: int) -> list[Record]:
    """The well-formed records of a results file, in order. A torn last line (a kill in the middle
    of a write) is cut off the file, so the next append starts on a fresh line."""
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as f:
            f.truncate(len(complete))
    records = []
    for line in complete.decode("utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if well_formed(record, configs):
                records.append(record)
    return records


def well_formed(record: Any, configs: int) -> bool:
    """Whether a parsed line is a record of this format for `configs` configurations."""
    if not isinstance(record, dict) or not isinstance(record.get("image"), str):
        return False
    if "error" in record:
        return True
    tops, dprob = record.get("top5"), record.get("dprob")
    return (isinstance(record.get("sha256"), str) and isinstance(tops, list) and len(tops) == configs
            and all(isinstance(t, list) and t for t in tops)
            and isinstance(dprob, list) and len(dprob) == configs - 1)
