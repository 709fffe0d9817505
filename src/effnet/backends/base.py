"""The protocol every inference engine implements, and `predictions`, which pipelines where it can."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
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


def predictions(backend: Backend, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """backend.predict(batch) for each batch, in order; pipelined across batches where the engine can."""
    if isinstance(backend, StreamingBackend):
        return backend.predict_stream(batches)
    return map(backend.predict, batches)
