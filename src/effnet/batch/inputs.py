"""The job's input list: files, folders, text lists and Parquet manifests -> one ordered list of URIs.

The list is the job: its order fixes the shards, and its digest is part of the run's identity, so the
same arguments always give the same list (folders are expanded sorted, lists keep their order).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import EffnetError
from .store import require_pyarrow

LIST_SUFFIXES = (".txt", ".lst", ".list")
MANIFEST_SUFFIXES = (".parquet", ".pq")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class InputError(EffnetError):
    """An input list that cannot be used: unreadable list, manifest without `uri`, repeated ids."""


@dataclass(frozen=True)
class Inputs:
    """The job's inputs in order: `uris` (absolute paths, or URIs as given) and, from manifests, `ids`.

    A folder entry that cannot be listed (a link loop, a path too long, a folder without permission) is an
    input like the others, at its sorted place, with its answer known already: `unlisted` maps its position
    to the error its row carries, so the job counts it as failed, as classify does."""

    uris: list[str]
    ids: list[str | None]
    unlisted: dict[int, str]  # position -> "cannot list PATH: reason"

    @property
    def has_ids(self) -> bool:
        return any(i is not None for i in self.ids)

    def digest(self) -> str:
        """sha256 of the list (ids included): a different list never resumes another's output."""
        h = hashlib.sha256()
        for uri, id_ in zip(self.uris, self.ids):
            h.update(uri.encode("utf-8", "surrogateescape") + b"\0")
            h.update(b"" if id_ is None else id_.encode("utf-8", "surrogateescape"))
            h.update(b"\n")
        return h.hexdigest()


def is_uri(text: str) -> bool:
    """`scheme://...` (s3://, gs://, https://, file://): opened with fsspec, kept exactly as given."""
    return bool(_URI.match(text))


def _entry(text: str, base: Path | None = None) -> str:
    if is_uri(text):
        return text
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    return os.path.abspath(path)


def collect_inputs(given: list[str | os.PathLike]) -> Inputs:
    """Expand the command line's INPUTs in order: a folder -> its images and the entries that cannot be
    listed (effnet's folder rules, sorted; see Inputs),
    `*.txt|.lst|.list` -> one path or URI a line (relative paths are relative to the list's folder; blank
    lines and lines starting with '#' are ignored), `*.parquet` -> its `uri` column (and `id`, if any),
    anything else -> one image (path or URI). Lists and manifests are local paths; given as URIs they
    are refused (InputError), not classified as one broken image."""
    uris: list[str] = []
    ids: list[str | None] = []
    unlisted: dict[int, str] = {}
    for item in given:
        text = os.fspath(item)
        if is_uri(text):
            if Path(urlsplit(text).path).suffix.lower() in LIST_SUFFIXES + MANIFEST_SUFFIXES:
                # not an image, and read as one it would become a single error row instead of the job
                raise InputError(f"{text}: lists and manifests are read from a path on this machine; copy it "
                                 "here or mount its store (the URIs inside them may point anywhere)")
            uris.append(text)
            ids.append(None)
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            from ..files import image_files

            found: list = []
            files = image_files(path, skipped=found)
            for entry, reason in sorted([(f, None) for f in files] + [(s.path, s.reason) for s in found],
                                        key=lambda pair: pair[0]):
                if reason is not None:
                    unlisted[len(uris)] = f"cannot list {os.path.abspath(entry)}: {reason}"
                uris.append(os.path.abspath(entry))
                ids.append(None)
        elif path.suffix.lower() in LIST_SUFFIXES:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(f"cannot read the input list {path}: {exc}") from exc
            entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
            uris.extend(_entry(e, path.parent) for e in entries)
            ids.extend([None] * len(entries))
        elif path.suffix.lower() in MANIFEST_SUFFIXES:
            m_uris, m_ids = read_manifest(path)
            uris.extend(m_uris)
            ids.extend(m_ids)
        else:
            uris.append(_entry(text))
            ids.append(None)
    seen: set[str] = set()
    for id_ in ids:
        if id_ is not None:
            if id_ in seen:
                raise InputError(f"id {id_!r} appears more than once in the manifests; ids must be unique")
            seen.add(id_)
    return Inputs(uris, ids, unlisted)


def read_manifest(path: Path) -> tuple[list[str], list[str | None]]:
    """A Parquet manifest's `uri` column (relative paths: relative to the manifest's folder) and its
    optional `id` column (kept as text)."""
    require_pyarrow()
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        if "uri" not in names:
            raise InputError(f"manifest {path} has no 'uri' column (it has: {', '.join(names)})")
        table = pq.read_table(path, columns=["uri"] + (["id"] if "id" in names else []))
    except InputError:
        raise
    except Exception as exc:  # pyarrow raises its own types for a file that is not Parquet
        raise InputError(f"cannot read the manifest {path}: {exc}") from exc
    raw = table.column("uri").to_pylist()
    if any(u is None or not str(u).strip() for u in raw):
        raise InputError(f"manifest {path} has empty 'uri' values")
    uris = [_entry(str(u), path.parent) for u in raw]
    ids = [None if i is None else str(i) for i in table.column("id").to_pylist()] if "id" in names else [None] * len(uris)
    return uris, ids
