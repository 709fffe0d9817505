"""One exception type per kind of user mistake; messages say what to do next.

Messages speak the Python API: a parameter is written `name=` (`weights=PATH`), and `params` lists the
parameters a message names, so that the command line can render its own flags instead (`--weights PATH`).
"""
from __future__ import annotations


class EffnetError(Exception):
    """Base of every error effnet raises on purpose; the CLI prints its message, not a traceback."""

    def __init__(self, message: str = "", *, params: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.params = params


class UnknownModelError(EffnetError, ValueError):
    """A model name that is not in the family."""


class ImageError(EffnetError):
    """An input that cannot be decoded as an image (empty, truncated, not an image, too large)."""


class WeightsError(EffnetError):
    """A weights file that exists but cannot be used: bad hash, unsafe pickle, wrong keys or shapes."""


class WeightsNotFoundError(EffnetError):
    """Weights that are neither in the cache nor downloadable (offline, missing file)."""


class MissingEngineError(EffnetError, ImportError):
    """An optional inference engine (onnxruntime, openvino, nncf) that is not installed."""


class RequestError(EffnetError):
    """Options that cannot go together or name nothing: an unknown export format, int8 without photos."""


class EngineError(EffnetError):
    """An engine choice that cannot run here: an unknown backend, a precision it lacks, no GPU."""


class DatasetError(EffnetError):
    """A labelled image set that cannot be evaluated: bad annotation line, missing file, unknown WNID."""


class OutputError(EffnetError, OSError):
    """Results that cannot be written: a full disk, a read-only or misplaced output folder."""
