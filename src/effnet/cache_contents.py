"""What effnet's cache holds, and taking things out of it: list, remove by name, prune to a size.

The layout (which folder holds what, and who writes it) is described once, in cache_layout.py.
Exports, blobs, compiled code and eval runs are derived: deleting them costs only time. Weights files may
be the user's own (a file put there by hand, a 267 MB download), so pruning leaves them unless asked.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import cache_layout as layout
from .cache_layout import cache_dir
from .errors import EffnetError
from .filenames import escape_name

WEIGHTS, REJECTED, PARTIAL = "weights", "rejected-weights", "partial-download"
EXPORT, UNFINISHED = "export", "unfinished-export"
BLOB, COMPILED, EVAL_RUN, DIGESTS, OTHER = "openvino-blob", "compiled-code", "eval-run", "digests", "other"
KINDS = (WEIGHTS, REJECTED, PARTIAL, EXPORT, UNFINISHED, BLOB, COMPILED, EVAL_RUN, DIGESTS, OTHER)
WEIGHT_KINDS = frozenset({WEIGHTS, REJECTED, PARTIAL})  # pruned only with include_weights
DERIVED_KINDS = frozenset({EXPORT, UNFINISHED, BLOB, COMPILED, EVAL_RUN})  # rebuilt on demand: pruned first
# An unfinished export touched this recently may be a build running in another process: not pruned.
BUILD_GRACE_S = 3600.0

_REJECTED = re.compile(r"(.+)\.rejected\d*$")


@dataclass(frozen=True)
class CacheEntry:
    """One removable thing in the cache: a file, or a folder that is used and removed as a whole."""

    name: str  # relative to the cache root, with '/': what `effnet cache remove` takes
    kind: str  # one of KINDS
    size: int  # bytes, everything it holds
    last_used: float  # newest access or modification time of its files (seconds since the epoch)
    detail: str = ""
    paths: tuple[Path, ...] = field(default=(), compare=False)  # what removing it deletes

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "size": self.size,
                "last_used": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.last_used)),
                "detail": self.detail}


@dataclass(frozen=True)
class Pruned:
    """What `prune` removed (or would remove, dry run) and the cache's size after it."""

    removed: list[CacheEntry]
    size_before: int
    size_after: int
    max_size: int
    # Entries left although the cache is still over max_size: the user's weights, 'other' files, and
    # unfinished exports that may be building right now.
    protected: list[CacheEntry]


def cache_entries(root: str | os.PathLike[str] | None = None) -> list[CacheEntry]:
    """Everything under the cache root as entries, sorted by name; an absent cache is empty."""
    from_env = root is None and bool(os.environ.get("EFFNET_HOME"))
    root = Path(root) if root is not None else cache_dir()
    if not root.is_dir():
        if root.exists() or root.is_symlink():  # a file (or a broken link) where the folder should be
            what = "a file" if root.exists() else "a broken symbolic link"
            if from_env:
                raise EffnetError(f"the cache EFFNET_HOME={escape_name(root)} is {what}, not a folder; point "
                                  "EFFNET_HOME at a folder (effnet creates it where none is)")
            raise EffnetError(f"the cache {escape_name(root)} is {what}, not a folder; move it away or set "
                              "EFFNET_HOME to a folder")
        return []  # no cache yet
    entries: list[CacheEntry] = []
    for child in sorted(root.iterdir()):
        if child.name == layout.WEIGHTS and child.is_dir():
            entries.extend(_weights_entries(root, child))
        elif child.name == layout.EXPORTS and child.is_dir():
            entries.extend(_each(root, child, lambda p: (UNFINISHED, "build in progress or interrupted")
                                 if p.name.startswith(".") else (EXPORT, _files_of(p))))
        elif child.name == layout.OPENVINO and child.is_dir():
            entries.extend(_each(root, child, lambda p: (BLOB, "compiled model")))
        elif child.name == layout.COMPILED and child.is_dir():
            entries.extend(_each(root, child, lambda p: (COMPILED, "torch.compile's code for one engine")))
        elif child.name == layout.EVAL and child.is_dir():
            entries.extend(_each(root, child, lambda p: (EVAL_RUN, _describe_run(p))))
        elif child.name == layout.DIGESTS and child.is_file():
            entries.append(_entry(root, [child], DIGESTS, _describe_digests(child)))
        else:
            entries.append(_entry(root, [child], OTHER, "not written by effnet"))
    return sorted(entries, key=lambda e: e.name)


def total_size(entries: Iterable[CacheEntry]) -> int:
    return sum(e.size for e in entries)


def remove_entries(names: Iterable[str], root: str | os.PathLike[str] | None = None) -> list[CacheEntry]:
    """Remove the entries called `names` (as `cache_entries` names them, or by their last component
    where that is unambiguous). Every name is checked before anything is deleted."""
    entries = cache_entries(root)
    chosen: list[CacheEntry] = []
    for name in names:
        entry = _find(entries, name)
        if entry not in chosen:
            chosen.append(entry)
    for entry in chosen:
        _delete(entry)
    return chosen


def prune(max_size: int, *, include_weights: bool = False, dry_run: bool = False,
          root: str | os.PathLike[str] | None = None, now: float | None = None) -> Pruned:
    """Remove least-recently-used entries until the whole cache is at most `max_size` bytes.

    Derived entries (exports, compiled blobs, eval runs) go first, oldest use first; weights files
    (official, rejected, partial downloads) only with `include_weights`, and after every derived one.
    Files effnet did not write, the digest memo, and unfinished exports touched within the last hour
    (perhaps being built now) are never pruned.
    """
    now = time.time() if now is None else now
    entries = cache_entries(root)
    size = before = total_size(entries)

    def prunable(e: CacheEntry) -> bool:
        if e.kind == UNFINISHED:
            return now - e.last_used > BUILD_GRACE_S
        return e.kind in DERIVED_KINDS or (include_weights and e.kind in WEIGHT_KINDS)

    order = sorted((e for e in entries if prunable(e)), key=lambda e: (e.kind in WEIGHT_KINDS, e.last_used))
    removed: list[CacheEntry] = []
    for entry in order:
        if size <= max_size:
            break
        if not dry_run:
            _delete(entry)
        removed.append(entry)
        size -= entry.size
    protected = [e for e in entries if e not in removed and not prunable(e)] if size > max_size else []
    return Pruned(removed, before, size, max_size, protected)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'1G', '500M', '1.5GB', '2GiB', '123' -> bytes. Units are binary (1K = 1024), as `du -h` prints them."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {text!r}; write e.g. 1G, 500M or 123456 (bytes)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def format_size(size: int) -> str:
    """Bytes in binary units with one decimal, e.g. 254.5M; plain bytes below 1K."""
    for unit in ("T", "G", "M", "K"):
        if size >= _UNITS[unit]:
            return f"{size / _UNITS[unit]:.1f}{unit}"
    return f"{size}B"


# ---- listing ------------------------------------------------------------------------------------

def _weights_entries(root: Path, folder: Path) -> Iterator[CacheEntry]:
    from .registry import registered_models, weights_entry

    official = {weights_entry(m).filename: m for m in registered_models()}
    files = {p.name: p for p in folder.iterdir()}
    for name, path in sorted(files.items()):
        if name.endswith(".verified") and name[: -len(".verified")] in files:
            continue  # listed with its weights file
        if name.endswith(".part"):
            yield _entry(root, [path], PARTIAL, f"download of {name[:-5]} to resume")
        elif match := _REJECTED.fullmatch(name):
            yield _entry(root, [path], REJECTED, f"set aside: not the official {match.group(1)} (wrong sha256)")
        elif path.is_file() and not name.endswith((".verified", ".tmp")):
            sidecar = files.get(name + ".verified")
            model = official.get(name)
            detail = f"official {model} weights" if model else "weights file"
            detail += ", sha256 verified" if sidecar else ""
            yield _entry(root, [path] + ([sidecar] if sidecar else []), WEIGHTS, detail)
        else:
            yield _entry(root, [path], OTHER, "leftover")


def _each(root: Path, folder: Path, classify) -> Iterator[CacheEntry]:
    for path in sorted(folder.iterdir()):
        kind, detail = classify(path)
        yield _entry(root, [path], kind, detail)


def _entry(root: Path, paths: list[Path], kind: str, detail: str) -> CacheEntry:
    size, last = 0, 0.0
    for path in paths:
        for file in _files(path):
            try:
                st = file.stat()
            except OSError:  # removed while we looked
                continue
            size += st.st_size
            last = max(last, st.st_atime, st.st_mtime)
    if last == 0.0:
        try:
            last = paths[0].stat().st_mtime
        except OSError:
            pass
    return CacheEntry(paths[0].relative_to(root).as_posix(), kind, size, last, detail, tuple(paths))


def _files(path: Path) -> Iterator[Path]:
    if path.is_symlink() or not path.is_dir():
        yield path  # a link counts as itself: its target is not ours to size or delete
        return
    for folder, _, names in os.walk(path):
        for name in names:
            yield Path(folder) / name


def _files_of(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir() if p.name != layout.EXPORT_DONE) if folder.is_dir() else []
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def _describe_run(folder: Path) -> str:
    """'efficientnet_b7 torch-fp32, openvino-fp32: 1200 images done of 50000, <dataset>' from the run's
    run.json (evaluate/store.py writes it) and its results."""
    try:
        run = json.loads((folder / layout.RUN_FILE).read_text(encoding="utf-8"))
        done = 0
        if (folder / layout.RESULTS_FILE).exists():
            with open(folder / layout.RESULTS_FILE, "rb") as results:
                done = sum(1 for line in results if line.strip())
        configurations = ", ".join(c if isinstance(c, str) else "-".join(map(str, c))
                                   for c in run.get("configurations", []))
        text = f"{run.get('model')} {configurations}: {done} images done"
        if run.get("images"):
            text += f" of {run['images']}"
        return text + (f", {run['dataset']}" if run.get("dataset") else "")
    except (OSError, ValueError, AttributeError, TypeError):
        return "eval run"


def _describe_digests(path: Path) -> str:
    try:
        return f"sha256 of {len(json.loads(path.read_text()))} weights files, remembered"
    except (OSError, ValueError, TypeError):
        return "sha256 memo (unreadable: it is rebuilt on use)"


# ---- removing -----------------------------------------------------------------------------------

def _find(entries: list[CacheEntry], name: str) -> CacheEntry:
    wanted = name.strip().strip("/")
    exact = [e for e in entries if e.name == wanted]
    if exact:
        return exact[0]
    by_last = [e for e in entries if e.name.rsplit("/", 1)[-1] == wanted]
    if len(by_last) == 1:
        return by_last[0]
    if by_last:
        raise EffnetError(f"{name!r} is ambiguous in the cache: {', '.join(e.name for e in by_last)}; "
                          "give the whole name")
    raise EffnetError(f"the cache has no entry {name!r}; `effnet cache` lists them")


def _delete(entry: CacheEntry) -> None:
    for path in entry.paths:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise EffnetError(f"cannot remove {escape_name(path)} ({exc.strerror or exc}); check its "
                              "permissions") from exc
