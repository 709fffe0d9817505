"""The protocol every inference engine implements, and `predictions`, which pipelines where it can."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, runtime_checkable

import numpy as np


class Backend(Protocol):
    """Runs the network on centre crops and returns the card's `prob` output.

    Input is uint8 RGB crops (N, S, S, 3), not normalised floats: normalisation belongs to the
    engine, because the converted (OpenVINO) model has mean and scale folded into its graph.
    """

    name: str
    precision: str

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB -> (N, 1000) float32 softmax probabilities; N may be 0."""
        ...

    def settings(self) -> dict:
        """How the engine actually runs (threads, streams, hint, ...), as plain data for reports."""
        ...


@runtime_checkable
class StreamingBackend(Backend, Protocol):
    """An engine with several inferences in flight (OpenVINO's infer requests)."""

    def predict_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """`predict` of each batch, in order, with no pause between batches: the next batch's images
        start as soon as a request frees up, while earlier results are handed back."""
        ...

    @property
    def capacity(self) -> int:
        """Images the engine computes at once (infer requests x images per request): a server keeps this
        many in flight so that no request sits idle between batches."""
        ...

    def submit(self, crops: np.ndarray, done: Callable[[np.ndarray | None, BaseException | None], None]) -> None:
        """Start `predict(crops)` and return without waiting for it: `done(probs, None)` or
        `done(None, error)` is called once, from an engine thread, when it ends. Blocks only while every
        infer request is busy."""
        ...


def predictions(backend: Backend, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """backend.predict(batch) for each batch, in order; pipelined across batches where the engine can."""
    if isinstance(backend, StreamingBackend):
        return backend.predict_stream(batches)
    return map(backend.predict, batches)
