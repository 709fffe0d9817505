"""Turning the job's URIs into answers with effnet's own reading and decoding (both engines use this)."""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from ..classifier import Classifier
from ..decode import EncodedImage
from .inputs import is_uri
from .store import Row


def read_uri(uri: str) -> bytes:
    """The bytes behind a URI, through fsspec (object stores need their fsspec package installed)."""
    try:
        import fsspec
    except ImportError as exc:
        raise OSError(f"reading {uri} needs fsspec (pip install fsspec and the package for its scheme)") from exc
    with fsspec.open(uri, "rb") as f:
        return f.read()


def classify_positions(classifier: Classifier, items: Iterable[tuple[int, str]], top: int) -> Iterator[Row]:
    """(position, uri) pairs -> Rows, streaming. Local paths go straight into classify_iter (read and
    decoded in its threads); URIs are read here first. A file that cannot be read or decoded is an error
    row; nothing here stops the stream."""
    fed: deque[tuple[int, str]] = deque()  # handed to classify_iter, answers pending, in order
    failed: deque[Row] = deque()  # could not even be read

    def sources() -> Iterator[object]:
        for position, uri, future in _read_ahead(items):
            if future is not None:
                try:
                    data = future.result()
                except Exception as exc:  # fsspec and its backends raise many kinds
                    failed.append(Row(position, uri, error=f"cannot read {uri}: {_one_line(exc)}"))
                    continue
                fed.append((position, uri))
                yield EncodedImage(data, uri)
            else:
                fed.append((position, uri))
                yield uri

    for outcome in classifier.classify_iter(sources(), top=top):
        while failed:
            yield failed.popleft()
        position, uri = fed.popleft()
        if outcome.error is not None:
            yield Row(position, uri, error=outcome.error)
        else:
            p = outcome.predictions
            yield Row(position, uri, indices=[x.index for x in p], labels=[x.label for x in p],
                      probabilities=[x.probability for x in p])
    yield from failed


def _read_ahead(items: Iterable[tuple[int, str]], workers: int = 8, ahead: int = 32
                ) -> Iterator[tuple[int, str, Future[bytes] | None]]:
    """(position, uri, future of its bytes) in order, URIs fetched in threads up to `ahead` items early (an
    object store answers in tens of milliseconds: read one by one, they would starve the engine); local
    paths get no future, classify_iter's decode threads read them."""
    pending: deque[tuple[int, str, Future[bytes] | None]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="effnet-read") as pool:
        for position, uri in items:
            pending.append((position, uri, pool.submit(read_uri, uri) if is_uri(uri) else None))
            if len(pending) >= ahead:
                yield pending.popleft()
        while pending:
            yield pending.popleft()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
