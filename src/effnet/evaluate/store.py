"""The resume store of `effnet eval`: one folder per column, so that each column's results are kept and reused
on their own. Adding a column, dropping one or reordering them computes only what no folder holds yet: the
reference column of an ImageNet run is never recomputed because another engine joins the table.

A column is (model, weights sha256, engine, precision, device, int8 calibration set); its folder,
``<resume_dir>/<model>-<engine>-<precision>[-<device>]-<hash of the identity>``, holds:
  run.json       the identity, plus the dataset the column last ran on (what `effnet cache` shows);
  results.jsonl  one JSON line per image, appended and flushed as each image finishes;
  probs.f32      the probabilities of each prediction line: float32 little-endian rows of 1000 classes.

The whole probability vector is kept because the agreement rows compare two columns class by class
(max |p_k - p_ref|) and any column may be the reference of a later run; stored per pair instead, a new column
would need the reference's vector again, i.e. the reference recomputed. Per image and column: 4,000 bytes in
probs.f32 and a JSON line of about 150 bytes for an ImageNet key, so ImageNet's 50,000 images take about 207 MB
per column (which B7 computes in hours on CPUs).

A stored prediction is reused only for the same image key *and* the same content: each line holds the sha256
of the file's bytes, the very bytes its crop was decoded from. An image replaced under the same name (same
label, same folder layout) is recomputed, never mixed with the old answer. The label is not part of the key:
predictions do not depend on it, and the current dataset's label is what is counted.

Lines (format 4); the last one for an (image, sha256) pair wins:
  {"image": key, "sha256": hex, "label": int, "row": n}        (its probabilities: row n of probs.f32)
  {"image": key, "sha256": hex or null, "label": int, "error": message}   (not decodable: retried every run)
A row is written before its line and both under a lock on results.jsonl, so a line never names a missing
row and two runs sharing a column never interleave; a line or row torn by a kill is cut off on opening.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..cache_layout import RESULTS_FILE, RUN_FILE, CacheLayout
from ..calibration import CalibrationSet
from ..datasets import Dataset
from ..errors import OutputError
from ..resolved import ResolvedModel
from .report import Configuration

FORMAT = 4  # in every column folder's identity: results of an older format are never read
PROBS_FILE = "probs.f32"
Record = dict[str, Any]
log = logging.getLogger(__name__)


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


def column_identity(model: ResolvedModel, configuration: Configuration,
                    calibration: CalibrationSet | None = None) -> dict[str, Any]:
    """Everything besides the image that determines one column's stored prediction, as plain data.

    `configuration` is what the engine runs (no "auto", no default precision); its device is named where it
    is not the CPU; the calibration set counts for int8 only. Random weights are never stored: no identity.
    """
    if model.random_weights:
        raise ValueError("random weights have no stored results")
    c = configuration
    return {"format": FORMAT, "model": model.name, "weights_sha256": model.weights_sha256,
            "configurations": [[c.backend, c.precision] + ([c.device] if c.device != "cpu" else [])],
            "calibration_sha256": calibration.sha256 if c.precision == "int8" and calibration else None,
            "preprocess": "omz-accuracy-checker, no EXIF"}


def column_directory(resume_dir: str | os.PathLike, model: ResolvedModel, configuration: Configuration,
                     calibration: CalibrationSet | None = None) -> Path:
    """The folder of one column, shared by every dataset and subset and by every table the column is in
    (each line carries its image's content digest)."""
    return column_folder(resume_dir, column_identity(model, configuration, calibration))


def column_folder(resume_dir: str | os.PathLike, identity: dict[str, Any]) -> Path:
    """``<resume_dir>/<model>-<column>-<hash of the identity>``: readable, and unique per identity."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    column = "-".join(identity["configurations"][0]).replace(":", "")
    return Path(resume_dir) / f"{identity['model']}-{column}-{digest}"


def write_run_file(folder: Path, identity: dict[str, Any], dataset: Dataset) -> None:
    """A human-readable note of what the folder holds (its name ends in a hash): the identity, and the
    dataset this run evaluates (the folder is shared by every dataset and subset of the same identity)."""
    note = {**identity, "dataset": str(dataset.source), "images": len(dataset)}
    tmp = folder / f".{RUN_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / RUN_FILE)


def open_stores(resume_dir: str | os.PathLike | None, model: ResolvedModel, configurations: Sequence[Configuration],
                dataset: Dataset, classes: int, calibrations: Sequence[CalibrationSet | None] = ()
                ) -> list[ResultStore]:
    """One store per column: its folder under `resume_dir` (created, run.json written), or memory only where
    `resume_dir` is None or the weights are random. `calibrations`: each int8 column's calibration set, in
    the same order. OutputError when a folder cannot be written."""
    if resume_dir is None or model.random_weights:
        return [ResultStore(None, classes) for _ in configurations]
    stores = []
    for configuration, calibration in itertools.zip_longest(configurations, calibrations[:len(configurations)]):
        identity = column_identity(model, configuration, calibration)
        folder = column_folder(resume_dir, identity)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_run_file(folder, identity, dataset)
            stores.append(ResultStore(folder, classes))
        except OSError as exc:
            raise OutputError(f"cannot keep eval results in {folder}: {_reason(exc)}; give a writable folder "
                              "as resume_dir=DIR", params=("resume_dir",)) from exc
    return stores


def usable_resume_dir(resume_dir: str | os.PathLike | None) -> Path | None:
    """`resume_dir`, or the cache's eval folder where it is None; None (results kept in memory, with one
    notice) where that default cannot be written. A folder the caller named must work: OutputError."""
    folder = Path(resume_dir).expanduser() if resume_dir is not None else default_resume_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return folder
    except OSError as exc:
        if resume_dir is not None:
            raise OutputError(f"cannot write to resume_dir={resume_dir}: {_reason(exc)}; give a writable folder",
                              params=("resume_dir",)) from exc
        log.warning("cannot keep eval results in %s (%s); this run keeps them in memory only: give resume_dir=DIR "
                    "to keep them elsewhere", folder, _reason(exc), extra={"params": ("resume_dir",)})
        return None


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


class ResultStore:
    """One column's stored results: read back once, then appended to as images finish.

    `folder` None keeps nothing (random weights, a cache that cannot be written): the evaluation counts each
    image once in its own memory, and nothing is left to read back.
    """

    def __init__(self, folder: str | os.PathLike | None, classes: int) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.classes = classes
        self._predictions: dict[tuple[str, str], Record] = {}  # (image key, content sha256) -> line
        self._rows: np.ndarray | None = None  # probs.f32 as it was when read: rows the lines point to
        if self.folder is not None:
            with self._locked():
                rows = self._repair()
                for record in read_records(self.results_file, rows):
                    self._index(record)
            self._map_rows()

    @property
    def results_file(self) -> Path | None:
        return self.folder / RESULTS_FILE if self.folder is not None else None

    @property
    def probs_file(self) -> Path | None:
        return self.folder / PROBS_FILE if self.folder is not None else None

    def stored_keys(self) -> set[str]:
        """Image keys with a stored prediction for some content (to be checked against the files)."""
        return {key for key, _ in self._predictions}

    def prediction(self, key: str, sha256: str | None) -> Record | None:
        """The stored prediction line for this image with exactly this content, if any."""
        return self._predictions.get((key, sha256)) if sha256 else None

    def probabilities(self, record: Record) -> np.ndarray:
        """The probability vector a stored prediction line points to."""
        if self._rows is None or record["row"] >= len(self._rows):
            self._map_rows()  # a line this process appended after the folder was read
        return np.asarray(self._rows[record["row"]])

    @contextlib.contextmanager
    def appending(self) -> Iterator[Callable[[Record, np.ndarray | None], None]]:
        """A function that stores one line (and, for a prediction, its probabilities): appended and flushed at
        once, so an interruption loses nothing that was reported."""
        if self.folder is None:
            yield lambda record, probs: None
            return
        with self.results_file.open("ab") as lines, self.probs_file.open("ab") as rows:
            def store(record: Record, probs: np.ndarray | None) -> None:
                with self._locked(lines.fileno()):
                    if probs is not None:
                        record = {**record, "row": os.fstat(rows.fileno()).st_size // self._row_bytes}
                        rows.write(np.ascontiguousarray(probs, dtype="<f4").tobytes())
                        rows.flush()
                    lines.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
                    lines.flush()
                self._index(record)
            yield store

    @property
    def _row_bytes(self) -> int:
        return 4 * self.classes

    @contextlib.contextmanager
    def _locked(self, fd: int | None = None) -> Iterator[None]:
        """The folder's lock (flock on results.jsonl): held while a row and its line are written or repaired."""
        import fcntl

        own = fd is None
        if own:
            fd = os.open(self.results_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            if own:
                os.close(fd)

    def _repair(self) -> int:
        """Cut what a kill in the middle of a write left: a torn last line, a partial last row. Returns the
        number of whole rows."""
        probs = self.probs_file
        size = probs.stat().st_size if probs.exists() else 0
        whole = size // self._row_bytes
        if whole * self._row_bytes != size:
            os.truncate(probs, whole * self._row_bytes)
        data = self.results_file.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete != len(data):
            os.truncate(self.results_file, complete)
        return whole

    def _map_rows(self) -> None:
        size = self.probs_file.stat().st_size if self.probs_file.exists() else 0
        count = size // self._row_bytes
        self._rows = (np.memmap(self.probs_file, dtype="<f4", mode="r", shape=(count, self.classes)) if count
                      else np.zeros((0, self.classes), np.float32))

    def _index(self, record: Record) -> None:
        if "row" in record:
            self._predictions[record["image"], record["sha256"]] = record


def read_records(path: Path, rows: int) -> list[Record]:
    """The well-formed lines of a results file, in order (its torn tail already cut off)."""
    records = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if well_formed(record, rows):
                records.append(record)
    return records


def well_formed(record: Any, rows: int) -> bool:
    """Whether a parsed line is a line of this format whose row (if any) is among the `rows` written."""
    if not isinstance(record, dict) or not isinstance(record.get("image"), str):
        return False
    if "error" in record:
        return True
    row = record.get("row")
    return (isinstance(record.get("sha256"), str) and isinstance(row, int) and not isinstance(row, bool)
            and 0 <= row < rows)
