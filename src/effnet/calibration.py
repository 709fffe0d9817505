"""The int8 calibration photos, resolved once: the folder's images, identified by their content.

One identity for the export cache's int8 files and for `effnet eval`'s stored results: the relative names
and the sha256 of every image's bytes, the subset size and the accuracy control's allowed drop (a folder
touched but unchanged is the same set; a photo replaced under the same name is not).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .errors import EngineError
from .files import folder_images

DEFAULT_SUBSET = 300  # NNCF's own default: enough for stable activation ranges on ImageNet models
HOLDOUT = 100  # photos kept back from calibration to measure agreement on photos it did not see
# Where an int8 model must be made (an export, an eval column) and no photos were given.
NEEDS_PHOTOS = "precision=int8 needs calibration=DIR: a folder of a few hundred representative photos"


@dataclass(frozen=True)
class CalibrationSet:
    """A folder of calibration photos, listed once; `sha256` is its identity (names and contents)."""

    folder: Path
    files: tuple[Path, ...]
    sha256: str
    subset_size: int = DEFAULT_SUBSET
    max_drop: float | None = None  # accuracy control: top-1 agreement with fp32 on the held-out photos >= 1 - this

    def split(self) -> tuple[list[Path], list[Path]]:
        """(calibration, held-out): every fifth file (up to HOLDOUT) is kept back to measure agreement."""
        held = list(self.files[::5][:HOLDOUT]) if len(self.files) >= 2 else []
        kept = set(held)
        return [f for f in self.files if f not in kept][:self.subset_size], held


def calibration_set(folder: str | os.PathLike[str], subset_size: int = DEFAULT_SUBSET, *,
                    max_drop: float | None = None) -> CalibrationSet:
    """The images under `folder` (EffnetError when there are none) and their identity, hashed in threads.
    `max_drop` (0 to 1): quantise with accuracy control, layers kept in float until top-1 agreement with fp32
    on the held-out photos is at least 1 - max_drop; None: plain post-training quantization."""
    if max_drop is not None and not 0 <= max_drop < 1:
        raise EngineError(f"max_drop={max_drop} is not a share of photos in [0, 1)", params=("max_drop",))
    root = Path(folder)
    files = folder_images(root, "calibration")
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(lambda p: hashlib.sha256(p.read_bytes()).hexdigest(), files))
    identity = hashlib.sha256(f"subset {subset_size}\n".encode())
    if max_drop is not None:  # absent for plain quantization: the identity of sets made before it existed
        identity.update(f"max_drop {max_drop!r}\n".encode())
    for path, digest in zip(files, digests):
        identity.update(f"{path.relative_to(root).as_posix()}\0{digest}\n".encode())
    return CalibrationSet(root, tuple(files), identity.hexdigest(), subset_size, max_drop)
