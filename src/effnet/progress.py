"""One progress hook for long library calls (eval, batch): the library says how far it is, the caller
decides how to show it (the command line draws a bar on a terminal; the default shows nothing)."""
from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, total: int, done: int = 0) -> None:
        """`total` units of work, `done` of them already finished (resumed work)."""
        ...

    def advance(self, count: int = 1) -> None:
        """`count` more units finished."""
        ...

    def note(self, text: str) -> None:
        """A short status beside the count (e.g. the running accuracy)."""
        ...

    def close(self) -> None:
        """The work ended (done, failed or interrupted)."""
        ...


class NoProgress:
    """Progress that shows nothing: the default of every library call."""

    def start(self, total: int, done: int = 0) -> None:
        pass

    def advance(self, count: int = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass
