"""ImageNet-1k class names, in the standard order (sorted WordNet IDs, index 0 = n01440764 tench).

The table lives in ``data/imagenet_classes.txt`` (``<wnid>\\t<full name>`` per line) and is read once,
on first use, so importing effnet costs nothing.
"""
from __future__ import annotations

from functools import cache
from importlib import resources

_DATA_FILE = "imagenet_classes.txt"


@cache
def _table() -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = resources.files("effnet").joinpath("data", _DATA_FILE).read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line]
    # A damaged package data file would silently shift every label: the classes are ImageNet's WordNet IDs in
    # sorted order, so a doubled or moved line breaks that order, and a lost one changes the class count,
    # which a checkpoint's classifier then refuses (its shape is checked on load).
    wnids = [row[0] for row in rows]
    if not rows or any(len(row) != 2 for row in rows) or wnids != sorted(set(wnids)):
        raise RuntimeError(f"effnet/data/{_DATA_FILE} is damaged: expected sorted, unique '<wnid>\\t<name>' lines")
    wnids, names = zip(*rows)
    return tuple(wnids), tuple(names)


def imagenet_wnids() -> tuple[str, ...]:
    """WordNet IDs per class index, e.g. 'n01440764' for index 0."""
    return _table()[0]


def imagenet_full_names() -> tuple[str, ...]:
    """Full synset text per class index, e.g. 'tench, Tinca tinca'."""
    return _table()[1]


@cache
def imagenet_labels() -> tuple[str, ...]:
    """Short readable name per class index: the first synonym, e.g. 'tench', 'espresso'."""
    return tuple(name.split(",", 1)[0].strip() for name in imagenet_full_names())


@cache
def _wnid_index() -> dict[str, int]:
    return {wnid: index for index, wnid in enumerate(imagenet_wnids())}


def wnid_to_index() -> dict[str, int]:
    """Map a WordNet ID to its class index (a fresh dict: callers may change it freely)."""
    return dict(_wnid_index())
