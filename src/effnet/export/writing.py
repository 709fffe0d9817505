"""Files written whole or not at all: each artefact goes to a temporary name beside its final one and is
renamed when complete, so a full disk or a killed process never leaves a truncated file under a final name;
and a write that failed because of its folder (a full disk, a read-only one) told apart from a failed build."""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

NO_SPACE = "no space left on device"
# Errors that are the folder's, not the build's.
_FOLDER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
# OpenVINO's writer reports a full disk as "basic_ios::clear: iostream error", without errno: a folder with
# less free space than this left when a write failed is taken to be full (a failed write leaves a page or so).
_LOW_SPACE = 1 << 20


class FolderWriteError(OSError):
    """A file that could not be written because of its folder (`reason`: "no space left on device", ...)."""

    def __init__(self, folder: Path, reason: str) -> None:
        super().__init__(f"cannot write to {folder}: {reason}")
        self.folder, self.reason = folder, reason


@contextlib.contextmanager
def written(final: str | os.PathLike[str], *companions: str) -> Iterator[Path]:
    """A temporary path beside `final`, with the same suffix, to write to. When the block ends it is renamed
    to `final`, after its `companions` (files of the same stem with these suffixes, such as the IR's
    ".bin"). If the block fails, every temporary is removed, and a failure of the folder (`write_failure`)
    becomes a FolderWriteError."""
    final = Path(final)
    # Named, not created (mkstemp would make it private): the writer creates it with the usual permissions.
    tmp = final.with_name(f".{final.stem}.{os.getpid()}-{secrets.token_hex(4)}.partial{final.suffix}")
    renames = [(tmp.with_suffix(s), final.with_suffix(s)) for s in companions] + [(tmp, final)]
    try:
        yield tmp
        for source, target in renames:
            os.replace(source, target)
    except BaseException as exc:
        reason = write_failure(exc, final.parent)  # before the temporaries go: they hold the space
        for source, _ in renames:
            with contextlib.suppress(OSError):
                source.unlink()
        if reason is None:
            raise
        raise FolderWriteError(final.parent, reason) from exc


def write_failure(exc: BaseException, folder: str | os.PathLike[str]) -> str | None:
    """Why writing into `folder` failed, in words, when `exc` is the folder's doing (no space, a quota, a
    read-only or forbidden folder); None when it is not, so that the caller lets it through as it is."""
    if isinstance(exc, OSError) and exc.errno in _FOLDER_ERRNOS:
        return (exc.strerror or os.strerror(exc.errno)).lower()
    if isinstance(exc, (OSError, RuntimeError)) and out_of_space(folder):
        return NO_SPACE
    return None


def out_of_space(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder`'s file system has (nearly) no space left for this user (root may use the reserve)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # gone, or no statvfs (Windows): not known to be full
        return False
    blocks = st.f_bfree if getattr(os, "geteuid", lambda: -1)() == 0 else st.f_bavail
    return blocks * st.f_frsize < _LOW_SPACE

