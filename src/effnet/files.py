"""Which image files a set of paths stands for: folders expanded recursively (every format Pillow decodes),
hidden entries left out, symbolic links followed but never back into a folder above them, and what cannot be
looked at reported as skipped rather than passed over in silence.

Used by classify, eval, bench, batch and int8 calibration; decoding the files is `decode.py`'s job.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile

from .errors import EffnetError
from .filenames import escape_name

log = logging.getLogger(__name__)

# Names starting with '.' are skipped unless given explicitly: `effnet classify .` must not wander into
# .venv or .git.

@dataclass(frozen=True)
class Skipped:
    """A folder entry that looked like an image (or was a folder) but could not be listed, and why
    (`reason` is printable as it is; `path` is the entry's own, for escape_name to print)."""

    path: Path
    reason: str


@dataclass
class Listing:
    """What a set of paths expands to: the files to classify, in order, and what was skipped."""

    files: list[Path]
    skipped: list[Skipped]


def image_suffixes() -> frozenset[str]:
    """Lower-case suffixes of every format Pillow can decode here, plugins registered so far included."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if _decodable(fmt))


def image_files(folder: str | os.PathLike, *, skipped: list[Skipped] | None = None) -> list[Path]:
    """The image files under `folder` (by suffix, recursively, hidden entries left out), sorted; empty if
    there are none. Entries that could not be looked at are appended to `skipped` when it is given."""
    files: list[Path] = []
    _walk(Path(folder), image_suffixes(), files, skipped if skipped is not None else [], frozenset())
    return sorted(files)


def folder_images(folder: str | os.PathLike, param: str) -> list[Path]:
    """The image files of a folder the caller gave as `param` (images, calibration): EffnetError when it is
    not a folder or holds no image; entries that could not be looked at are logged, a line each."""
    if not Path(folder).is_dir():
        raise EffnetError(f"{param}={escape_name(folder)}: not a folder; give a folder of images", params=(param,))
    skipped: list[Skipped] = []
    files = image_files(folder, skipped=skipped)
    for entry in skipped:
        log.warning("skipped %s: %s", escape_name(entry.path), entry.reason)
    if not files:
        raise EffnetError(f"{param}={escape_name(folder)}: no image files (any format Pillow reads) under it",
                          params=(param,))
    return files


def expand_inputs(paths: Iterable[str | os.PathLike]) -> Listing:
    """Paths -> files: a folder becomes its images (see image_files), anything else is kept
    as given (even a hidden or missing file: the classifier then says what is wrong with it)."""
    listing = Listing([], [])
    for given in paths:
        path = Path(given)
        try:
            is_folder = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError:  # missing, or a parent without permission: reported per file when it is read
            is_folder = False
        listing.files.extend(image_files(path, skipped=listing.skipped) if is_folder else [path])
    return listing


def _decodable(fmt: str) -> bool:
    if fmt not in Image.OPEN or fmt == "MPEG":  # MPEG: Pillow reads the size, never the pixels
        return False
    if fmt == "EPS":  # PostScript needs Ghostscript installed
        from PIL import EpsImagePlugin

        return bool(EpsImagePlugin.has_ghostscript())
    factory = Image.OPEN[fmt][0]  # stubs (HDF5, GRIB, BUFR) need a handler that Pillow does not ship
    return not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))


def _walk(folder: Path, suffixes: frozenset[str], files: list[Path], skipped: list[Skipped],
          above: frozenset[tuple[int, int]]) -> None:
    try:
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in above:
            skipped.append(Skipped(folder, "symbolic link loop (it leads back to a folder above it)"))
            return
        with os.scandir(folder) as scan:
            entries = list(scan)
    except OSError as exc:
        skipped.append(Skipped(folder, _os_reason(exc)))
        return
    above = above | {(st.st_dev, st.st_ino)}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        image_name = path.suffix.lower() in suffixes
        try:
            if not entry.is_symlink():  # d_type from the listing: no stat per entry
                if entry.is_dir(follow_symlinks=False):
                    _walk(path, suffixes, files, skipped, above)
                elif image_name and entry.is_file(follow_symlinks=False):
                    files.append(path)
                elif image_name:
                    skipped.append(_not_regular(path, entry.stat(follow_symlinks=False).st_mode))
                continue
            target = os.stat(path)  # a link: follow it
        except FileNotFoundError:
            if image_name:
                skipped.append(Skipped(path, f"broken symbolic link (to {escape_name(os.readlink(path))})"))
            continue
        except OSError as exc:
            if image_name or exc.errno == errno.ELOOP:
                skipped.append(Skipped(path, _os_reason(exc)))
            continue
        if stat.S_ISDIR(target.st_mode):
            _walk(path, suffixes, files, skipped, above)
        elif image_name and stat.S_ISREG(target.st_mode):
            files.append(path)
        elif image_name:
            skipped.append(_not_regular(path, target.st_mode))


def _not_regular(path: Path, mode: int) -> Skipped:
    """A FIFO, device or socket named like an image: reading a FIFO waits for a writer, /dev/zero never ends."""
    return Skipped(path, f"it is {file_kind(mode)}, not a regular file")


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file"))


def file_kind(mode: int) -> str:
    """What a stat mode says a path is, in words: 'a FIFO (named pipe)', 'a character device', ..."""
    return next((what for test, what in _KINDS if test(mode)), "a special file")


def _os_reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    return (exc.strerror or str(exc)).lower()
