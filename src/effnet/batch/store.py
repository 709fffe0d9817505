"""The output folder: the run's identity beside a Parquet dataset written shard by shard, exactly once.

Exactly once, by construction:
- the input list is cut into fixed shards (shard k = inputs[k*S:(k+1)*S]); shard k's rows are written to
  a hidden temporary file, fsynced, then renamed to `part-<k>-of-<n>.parquet` (os.replace is atomic);
- a reader (pyarrow, Spark, DuckDB) ignores hidden `.`/`_` files, so it sees whole shards or nothing;
- a rerun treats every `part-*` file as done and classifies only the other shards; a shard written twice
  (two drivers racing) is renamed over itself with the same rows, never appended: no duplicates.
- `_effnet_batch.json` (the identity: model, weights sha256, engine, precision, effnet version, input
  digest, shard size) is written before any shard; a different identity refuses to mix unless restart.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import EffnetError, MissingEngineError, OutputError
from ..filenames import escape_name
from ..oserrors import os_reason, os_reason_and_remedy

IDENTITY_FILE = "_effnet_batch.json"
LOCK_FILE = "_effnet_batch.lock"
_PART = re.compile(r"^part-(\d{6,})-of-(\d{6,})\.parquet$")
_TEMP = re.compile(r"^\.(part-\d+-of-\d+\.parquet|_effnet_batch\.json)\..*\.tmp$")
FORMAT = 1


class IdentityMismatch(EffnetError):
    """The output folder holds another job's results (other inputs, model, engine...)."""


def foreign_entries(root: str | os.PathLike) -> list[str]:
    """Names in an output folder that a reader of the dataset would take but that are not shards (images,
    sub-folders...), sorted; readers skip `.` and `_` names (temporaries, the identity, the lock)."""
    try:
        names = os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError:
        return []  # unreadable: opening the folder says so, with the reason
    return sorted(n for n in names if not n.startswith((".", "_")) and not _PART.match(n))


def require_pyarrow():
    try:
        import pyarrow
    except ImportError as exc:
        raise MissingEngineError("effnet batch writes Parquet and needs pyarrow; install it with: "
                                 "pip install 'effnet[batch]'") from exc
    return pyarrow


def shard_name(index: int, count: int) -> str:
    return f"part-{index:06d}-of-{count:06d}.parquet"


def shard_bounds(index: int, size: int, total: int) -> tuple[int, int]:
    return index * size, min((index + 1) * size, total)


def shard_count(total: int, size: int) -> int:
    return (total + size - 1) // size


@dataclass(frozen=True)
class Row:
    """One input's answer at its position in the input list."""

    position: int
    uri: str
    error: str | None = None
    indices: list[int] | None = None
    labels: list[str] | None = None
    probabilities: list[float] | None = None


def schema(with_ids: bool):
    pa = require_pyarrow()
    fields = [pa.field("id", pa.string())] if with_ids else []
    fields += [pa.field("uri", pa.string(), nullable=False), pa.field("error", pa.string()),
               pa.field("indices", pa.list_(pa.int32())), pa.field("labels", pa.list_(pa.string())),
               pa.field("probabilities", pa.list_(pa.float32()))]
    return pa.schema(fields)


class Store:
    """One output folder. Use `open()` (takes the folder's lock), then `prepare(identity, restart)`."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._lock_fd: int | None = None

    # -- lock: one writer per folder (flock is dropped by the kernel when a killed process dies) --
    @contextlib.contextmanager
    def open(self) -> Iterator[Store]:
        import fcntl

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot use {escape_name(self.root)} as the output folder: {os_reason(exc)}; give a "
                              "writable folder as output=DIR", params=("output",)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"another effnet batch run is writing to {self.root}; wait for it or stop it") from None
            # ENOLCK, EOPNOTSUPP...: some network and FUSE file systems (object-store mounts) have no locks
            raise OutputError(f"cannot lock {self.root / LOCK_FILE}: {exc.strerror or exc}; the output folder "
                              "must be on a file system with file locks and atomic renames") from exc
        self._lock_fd = fd
        try:
            yield self
        finally:
            os.close(fd)  # releases the lock
            self._lock_fd = None

    def identity(self) -> dict | None:
        try:
            return json.loads((self.root / IDENTITY_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            why = os_reason(exc) if isinstance(exc, OSError) else exc
            raise OutputError(f"cannot read {escape_name(self.root / IDENTITY_FILE)}: {why}; use restart=True to "
                              "start over", params=("restart",)) from exc

    def prepare(self, identity: dict, restart: bool) -> None:
        """Make the folder this job's: refuse another job's results unless `restart` (which deletes them)."""
        old = self.identity()
        parts = self.done()
        if restart:
            self.clear()
        elif old is not None and old != identity:
            changed = [k for k in sorted(set(old) | set(identity)) if old.get(k) != identity.get(k)]
            raise IdentityMismatch(
                f"{self.root} holds another job's results ({', '.join(f'{k}: {old.get(k)} -> {identity.get(k)}' for k in changed)}); "
                "use another output=DIR, or restart=True to delete them and start over", params=("output", "restart"))
        elif old is None and parts:
            raise IdentityMismatch(f"{self.root} holds part files but no {IDENTITY_FILE}; use another output=DIR, "
                                   "or restart=True to delete them and start over", params=("output", "restart"))
        self.remove_temporaries()
        if restart or old is None:
            text = json.dumps(identity, indent=2, sort_keys=True) + "\n"
            self._write_atomic(self.root / IDENTITY_FILE, lambda f: f.write(text.encode()))

    def done(self) -> dict[int, Path]:
        """Finished shards by index (only complete files ever carry a part name)."""
        out = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                m = _PART.match(entry.name)
                if m:
                    out[int(m.group(1))] = Path(entry.path)
        return out

    def clear(self) -> None:
        for entry in list(os.scandir(self.root)):
            if _PART.match(entry.name) or _TEMP.match(entry.name) or entry.name == IDENTITY_FILE:
                os.unlink(entry.path)

    def remove_temporaries(self) -> None:
        """Files a killed run left half-written (under the lock, no live writer owns them)."""
        for entry in list(os.scandir(self.root)):
            if _TEMP.match(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def write_shard(self, index: int, count: int, rows: list[Row], with_ids: bool, ids: list[str | None],
                    extra: dict[str, str] | None = None) -> Path:
        """Write one shard's rows (in input order) through a temporary file and an atomic rename."""
        pa = require_pyarrow()
        import pyarrow.parquet as pq

        rows = sorted(rows, key=lambda r: r.position)
        columns = {}
        if with_ids:
            columns["id"] = ids
        columns.update(uri=[r.uri for r in rows], error=[r.error for r in rows],
                       indices=[r.indices for r in rows], labels=[r.labels for r in rows],
                       probabilities=[r.probabilities for r in rows])
        failed = sum(r.error is not None for r in rows)
        meta = {"effnet.rows": str(len(rows)), "effnet.failed": str(failed), **(extra or {})}
        table = pa.table(columns, schema=schema(with_ids).with_metadata(meta))
        final = self.root / shard_name(index, count)
        self._write_atomic(final, lambda f: pq.write_table(table, f))
        return final

    def shard_counts(self, path: Path) -> tuple[int, int]:
        """(rows, failed) of a finished shard, from its footer."""
        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata or {}
        rows = int(meta.get(b"effnet.rows", b"-1"))
        failed = int(meta.get(b"effnet.failed", b"0"))
        if rows < 0:
            table = pq.read_table(path, columns=["error"])
            rows, failed = table.num_rows, table.num_rows - table.column("error").null_count
        return rows, failed

    def _write_atomic(self, path: Path, write: Callable[[BinaryIO], object]) -> None:
        """write(file) into a hidden temporary sibling, fsynced, then renamed to `path`: a reader sees the
        whole file or none of it."""
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with open(temp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
            self._fsync_dir()
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise OutputError(f"cannot write {escape_name(path)}: {os_reason_and_remedy(exc, resumable=True)}") from exc

    def _fsync_dir(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
