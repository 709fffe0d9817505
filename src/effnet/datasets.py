"""ImageNet-style labelled image sets in the three layouts people actually have on disk.

1. ``val.txt``: a folder of images plus ``<relative path> <class index>`` lines (Caffe / OMZ form);
2. one sub-folder per WordNet ID (``n01440764/...``), indices in sorted-WNID order;
3. Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``), images as ``<ImageId>.JPEG``.

Every mistake found here (bad line, missing file, unknown WNID) is a DatasetError naming the file and
line, found before any inference starts, so a 50k-image run never dies half way on a typo.
"""
from __future__ import annotations

import csv
import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .errors import DatasetError
from .contract import num_classes
from .labels import wnid_to_index
from .files import image_suffixes

ANNOTATIONS_FILE = "val.txt"
LOC_SOLUTION_FILE = "LOC_val_solution.csv"
# Where Kaggle's ImageNet download puts the validation JPEGs relative to LOC_val_solution.csv.
KAGGLE_VAL_DIR = Path("ILSVRC", "Data", "CLS-LOC", "val")
_SHOW = 5  # how many offending names an error message lists before "and N more"


class Layout(Enum):
    ANNOTATIONS = "annotations"
    WNID_FOLDERS = "wnid-folders"
    LOC_CSV = "loc-csv"


@dataclass(frozen=True)
class Sample:
    key: str  # POSIX path relative to the image root: stable across machines; with the content, the resume key
    path: Path
    label: int


@dataclass(frozen=True)
class Dataset:
    layout: Layout
    root: Path  # the image folder
    source: Path  # what the labels came from: the annotations/CSV file, or the root itself
    samples: tuple[Sample, ...]

    def __len__(self) -> int:
        return len(self.samples)

    def fingerprint(self) -> str:
        """Hash of the (key, label) list: names the dataset, unchanged if the folder moves. Not the
        resume key: a copy with replaced images has the same fingerprint (evaluate.store keys on content)."""
        digest = hashlib.sha256(self.layout.value.encode())
        for s in self.samples:
            digest.update(f"\n{s.key}\t{s.label}".encode())
        return digest.hexdigest()[:16]

    def subset(self, limit: int | None) -> Dataset:
        """A deterministic `limit`-image subset, stratified: round-robin over classes.

        When a round does not fit whole, its classes are taken evenly spaced over the label range
        (not the first ones), so limit=100 on ImageNet is not a hundred fish and birds.
        """
        if limit is None or limit >= len(self.samples):
            return self
        if limit <= 0:
            raise DatasetError(f"limit={limit}: give a positive number of images", params=("limit",))
        by_class: dict[int, list[int]] = defaultdict(list)
        for i, s in enumerate(self.samples):
            by_class[s.label].append(i)
        classes = sorted(by_class)
        chosen: list[int] = []
        for r in range(max(len(v) for v in by_class.values())):
            members = [by_class[c][r] for c in classes if len(by_class[c]) > r]
            need = limit - len(chosen)
            if len(members) > need:
                members = [members[j * len(members) // need] for j in range(need)]
            chosen += members
            if len(chosen) == limit:
                break
        return Dataset(self.layout, self.root, self.source, tuple(self.samples[i] for i in sorted(chosen)))


def load_dataset(data: str | os.PathLike, annotations: str | os.PathLike | None = None) -> Dataset:
    """Find the labelled images in `data`, whichever of the three layouts it uses.

    `annotations` (a val.txt-style or LOC CSV file) labels the images under `data`; without it, a
    `val.txt` or `LOC_val_solution.csv` inside `data` is used, else WNID sub-folders. `data` may also
    be the annotations file itself, with the images beside it.
    """
    data = Path(data)
    if not data.exists():
        raise DatasetError(f"{data} does not exist; give the ImageNet validation folder (or its val.txt)")
    if annotations is not None:
        if not data.is_dir():
            raise DatasetError(f"{data} is not a folder: with annotations=FILE, the data is the image folder",
                               params=("annotations",))
        return _from_labels_file(Path(annotations), data)
    if data.is_file():
        return _from_labels_file(data, data.parent)
    for name in (ANNOTATIONS_FILE, LOC_SOLUTION_FILE):
        if (data / name).is_file():
            return _from_labels_file(data / name, data)
    return _from_wnid_folders(data)


def _from_labels_file(path: Path, root: Path) -> Dataset:
    if not path.is_file():
        raise DatasetError(f"annotations file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM from a spreadsheet export is dropped
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not a text file of labels (not UTF-8)") from exc
    if text.startswith("ImageId"):
        return _from_loc_csv(path, text, root)
    return _from_annotations(path, text, root)


def _from_annotations(path: Path, text: str, root: Path) -> Dataset:
    samples: list[Sample] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(None, 1)  # rsplit: file names with spaces stay whole
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DatasetError(f"{path}:{n}: expected '<relative path> <class index>', got {line.strip()!r}")
        label = int(parts[1])
        if not 0 <= label < num_classes():
            raise DatasetError(f"{path}:{n}: class index {label} is outside 0..{num_classes() - 1}")
        key = Path(parts[0].strip()).as_posix()
        samples.append(Sample(key, root / key, label))
    return _checked(Dataset(Layout.ANNOTATIONS, root, path, tuple(samples)))


def _from_loc_csv(path: Path, text: str, root: Path) -> Dataset:
    index = wnid_to_index()
    rows = list(csv.reader(text.splitlines()))
    if rows[0][:2] != ["ImageId", "PredictionString"]:
        raise DatasetError(f"{path}:1: expected the header 'ImageId,PredictionString', got {','.join(rows[0])!r}")
    image_dir = _loc_image_dir(path, root, rows)
    samples: list[Sample] = []
    for n, row in enumerate(rows[1:], 2):
        if not row:
            continue
        tokens = row[1].split() if len(row) == 2 else []
        if not row[0] or not tokens:
            raise DatasetError(f"{path}:{n}: expected '<ImageId>,<WNID> <box>...', got {','.join(row)!r}")
        if tokens[0] not in index:
            raise DatasetError(f"{path}:{n}: unknown WordNet ID {tokens[0]!r} (not one of the ImageNet-1k classes)")
        key = row[0] + ".JPEG"
        samples.append(Sample(key, image_dir / key, index[tokens[0]]))
    return _checked(Dataset(Layout.LOC_CSV, image_dir, path, tuple(samples)))


def _loc_image_dir(path: Path, root: Path, rows: list[list[str]]) -> Path:
    """The folder holding <ImageId>.JPEG: beside the CSV, in DATA, or Kaggle's ILSVRC/.../val."""
    probe = next((r[0] + ".JPEG" for r in rows[1:] if r and r[0]), None)
    candidates = dict.fromkeys([root, path.parent, path.parent / KAGGLE_VAL_DIR, root / KAGGLE_VAL_DIR])
    for folder in candidates:
        if probe is not None and (folder / probe).is_file():
            return folder
    return root  # nothing found: _checked reports the missing files under DATA


def _from_wnid_folders(root: Path) -> Dataset:
    index = wnid_to_index()
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(
            f"{root} has no {ANNOTATIONS_FILE}, no {LOC_SOLUTION_FILE} and no WordNet-ID sub-folders; "
            "give annotations=FILE with '<relative path> <class index>' lines", params=("annotations",))
    unknown = [p.name for p in folders if p.name not in index]
    if unknown:
        raise DatasetError(
            f"{root}: {len(unknown)} sub-folder(s) are not ImageNet-1k WordNet IDs: {_listing(unknown)}; "
            "expected one folder per class named like n01440764")
    suffixes = image_suffixes()
    samples = [
        Sample(f"{folder.name}/{file.name}", file, index[folder.name])
        for folder in folders
        for file in sorted(folder.iterdir())
        if file.is_file() and file.suffix.lower() in suffixes
    ]
    return _checked(Dataset(Layout.WNID_FOLDERS, root, root, tuple(samples)))


def _checked(dataset: Dataset) -> Dataset:
    if not dataset.samples:
        raise DatasetError(f"{dataset.source} lists no images")
    seen: set[str] = set()
    twice = [s.key for s in dataset.samples if s.key in seen or seen.add(s.key)]
    if twice:
        raise DatasetError(f"{dataset.source}: {len(twice)} image(s) listed more than once: {_listing(twice)}")
    missing = [s.key for s in dataset.samples if not s.path.is_file()]
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(dataset)} images listed in {dataset.source} are missing under "
            f"{dataset.root}: {_listing(missing)}; is DATA the folder that holds them?")
    return dataset


def _listing(names: list[str]) -> str:
    more = f" and {len(names) - _SHOW} more" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more
