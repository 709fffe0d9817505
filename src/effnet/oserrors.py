"""An OS error in words for one-line messages: what happened, without Python's `[Errno N]` and the repr of
the file name, and what to do about it. Callers say what they were doing ("cannot write PATH: ...")."""
from __future__ import annotations

import errno

# What the error's own text leaves unclear where effnet meets it (creating folders, writing files).
_REASONS = {
    errno.EEXIST: "a file (or a broken symbolic link) is in the way",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}
_REMEDIES = {
    errno.ENOSPC: "free some space", errno.EDQUOT: "free some space (the disk quota is reached)",
    errno.EROFS: "write somewhere else", errno.EACCES: "check the permissions", errno.EPERM: "check the permissions",
    errno.EEXIST: "remove it or choose another name", errno.ENOTDIR: "check the path",
    errno.ENAMETOOLONG: "use a shorter name", errno.EIO: "the device reported an error; check the disk",
}


def os_reason(exc: OSError) -> str:
    """What happened, e.g. 'No space left on device' for `[Errno 28] No space left on device: 'x'`."""
    return _REASONS.get(exc.errno) or exc.strerror or str(exc) or type(exc).__name__


def os_remedy(exc: OSError, *, resumable: bool = False) -> str | None:
    """What to do about it, e.g. 'free some space'; None where the reason says all there is. `resumable`:
    the work continues where it stopped when the same command runs again (batch, eval), which it then says."""
    remedy = _REMEDIES.get(exc.errno)
    if resumable:
        return (f"{remedy}, then r" if remedy else "R") + "un the same command again: it resumes where it stopped"
    return remedy


def os_reason_and_remedy(exc: OSError, *, resumable: bool = False) -> str:
    """'<reason>; <remedy>', or the reason alone."""
    remedy = os_remedy(exc, resumable=resumable)
    return f"{os_reason(exc)}; {remedy}" if remedy else os_reason(exc)
