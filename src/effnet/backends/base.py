"""The protocol every inference engine implements, and `predictions`, which pipelines where it can."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from torch import nn


class Backend(Protocol):
    """Runs the network on centre crops and returns the card's `prob` output.

    Input is uint8 RGB crops (N, S, S, 3), not normalised floats: normalisation belongs to the
    engine, because the converted (OpenVINO) model has mean and scale folded into its graph.
    """

    name: str
    precision: str
    device: str  # "cpu" or "cuda:N": where the network runs

    def predict(self, crops: Any) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB -> (N, classes) float32 softmax probabilities; N may be 0."""
        ...

    def settings(self) -> dict:
        """How the engine actually runs (threads, streams, hint, ...), as plain data for reports."""
        ...

    @property
    def torch_module(self) -> nn.Module | None:
        """The network as an eager torch module on the engine's device, where the engine runs one (Grad-CAM
        differentiates it); None where the engine runs a graph of its own (ONNX Runtime, OpenVINO)."""
        ...


@runtime_checkable
class WarmableBackend(Protocol):
    """An engine whose first batch of each shape costs much more than the rest (a compiled GPU engine)."""

    def warm_up(self) -> None:
        """Prepare every batch shape now (compile, record graphs), so that no request pays for it."""
        ...


@runtime_checkable
class PipelinedBackend(Backend, Protocol):
    """An engine that overlaps consecutive batches (OpenVINO's infer requests, a GPU's copies and compute)."""

    def predict_stream(self, batches: Iterable[Any]) -> Iterator[np.ndarray]:
        """`predict` of each batch, in order, with no pause between batches: the next batch starts while
        earlier results are handed back."""
        ...


@runtime_checkable
class StreamingBackend(PipelinedBackend, Protocol):
    """An engine with several inferences in flight that a server can feed one batch at a time."""

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


def predictions(backend: Backend, batches: Iterable[Any]) -> Iterator[np.ndarray]:
    """backend.predict(batch) for each batch, in order; pipelined across batches where the engine can."""
    if isinstance(backend, PipelinedBackend):
        return backend.predict_stream(batches)
    return map(backend.predict, batches)
