"""Files that ship inside the package: the ImageNet class names and an example photo.

The photo lets an installed effnet check itself on a real picture with no other files at hand:
`effnet export` verifies its output on it (synthetic images are not what the network was trained on).
"""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

EXAMPLE_PHOTO = "espresso.jpg"  # scikit-image's "Coffee cup" (CC0, Rachel Michetti); see NOTICE


def data_file(name: str) -> Path:
    """The path of one of the package's data files; FileNotFoundError names it if it is not installed."""
    path = _HERE / name
    if not path.is_file():
        raise FileNotFoundError(f"effnet's data file {name} is missing from {_HERE}: reinstall effnet")
    return path


def example_photo() -> Path:
    """The bundled example photo (600x400 JPEG; ImageNet class 967, espresso)."""
    return data_file(EXAMPLE_PHOTO)
