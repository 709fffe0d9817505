"""Classifier: images -> centre crops -> backend -> probabilities -> top-k labelled predictions."""
from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

import numpy as np

from .arch import DEFAULT_MODEL
from .backends import Backend, create_backend
from .backends.base import predictions
from .errors import EffnetError
from .labels import imagenet_labels
from .preprocessing import EncodedImage, ImageSource, center_crop, load_image
from .resolved import ResolvedModel, Weights, resolve

if TYPE_CHECKING:
    from .explain import Explanation


T = TypeVar("T")
R = TypeVar("R")


class Prediction(NamedTuple):
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Decoded(Generic[T]):
    """One item of a decode stream: its (S, S, 3) uint8 crop, or why it has none."""

    item: T
    crop: np.ndarray | None = None
    error: str | None = None


@dataclass(frozen=True)
class Outcome:
    """One input of a stream: its predictions, or why it could not be classified."""

    source: str
    predictions: list[Prediction] | None = None
    error: str | None = None


def describe(source: ImageSource) -> str:
    if isinstance(source, EncodedImage):
        return source.name
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__}>"


def bounded_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """pool.map, in order, but with at most `ahead` items in flight: a million files never sit in memory."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class Classifier:
    """ImageNet-1k classification with one of the family's models (B7, the card's, by default), on
    the fastest installed engine by default (OpenVINO, when effnet[openvino] is installed).

    Photos are turned upright by their EXIF orientation first (`exif_transpose=False` keeps the
    accuracy checker's exact behaviour, as `effnet eval` does).
    """

    def __init__(self, model: str | ResolvedModel = DEFAULT_MODEL, weights: Weights = "imagenet", *,
                 backend: str | Backend = "auto", precision: str | None = None,
                 calibration: str | os.PathLike | None = None, batch_size: int = 8,
                 exif_transpose: bool = True, decode_workers: int | None = None,
                 log: Callable[[str], None] = lambda _: None, max_pixels: int | None = None) -> None:
        """`model`: a name (resolved here, once, with `weights`: "imagenet", a path, or None/"random")
        or a ResolvedModel. `backend`: an engine name (torch, onnxruntime, openvino, or auto: the
        fastest installed) run at `precision` (None: the engine's default, bf16 for OpenVINO on CPUs
        that have it), or a ready Backend. `calibration`: an image folder, for int8. `log` hears one
        line before long work (the first build of an engine model)."""
        if isinstance(backend, str):
            from .backends import resolve_kind

            resolve_kind(backend, precision)  # a missing engine or precision fails before any download
        self.resolved = resolve(model, weights)
        self.config = self.resolved.preprocess
        if isinstance(backend, str):
            backend = create_backend(backend, self.resolved, precision, calibration=calibration, log=log)
        self.backend = backend
        self.batch_size = batch_size
        self.exif_transpose = exif_transpose
        self.max_pixels = max_pixels  # files over it are refused undecoded; None: Pillow's threshold (load_image)
        self.decode_workers = decode_workers or min(4, os.cpu_count() or 1)
        self.labels = imagenet_labels()
        self._gradient_model = None  # built on the first explain() where the engine is not torch

    @property
    def name(self) -> str:
        return self.resolved.name

    def describe(self) -> dict[str, str | None]:
        """Which model, weights, engine and precision answer: what every output should carry."""
        return {**self.resolved.describe(), "backend": self.backend.name, "precision": self.backend.precision}

    def crop(self, image: ImageSource) -> np.ndarray:
        """Decode one input and cut the (S, S, 3) uint8 crop the backend takes."""
        return center_crop(load_image(image, exif_transpose=self.exif_transpose, max_pixels=self.max_pixels), self.config)

    def top_k(self, probs: np.ndarray, top: int) -> list[list[Prediction]]:
        top = max(1, min(top, probs.shape[1]))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
        return [[Prediction(int(i), self.labels[i], float(p[i])) for i in row] for p, row in zip(probs, order)]

    def explain(self, image: ImageSource, target: int | str | None = None) -> Explanation:
        """Grad-CAM of `target` (a class index or label; None: the top-1) on `image`, computed with the
        PyTorch model (gradients) whatever engine answers `classify`; heatmap and overlay on the photo
        as the user sees it (EXIF orientation applied when the classifier applies it)."""
        from .explain import resolve_target

        return self._explain(image, 1 if target is None else [resolve_target(target, self.labels)])[0]

    def explain_top(self, image: ImageSource, k: int = 5) -> list[Explanation]:
        """Explanations of the `k` most likely classes, most likely first (one forward pass for all)."""
        return self._explain(image, max(1, k))

    def _explain(self, image: ImageSource, targets: int | list[int]) -> list[Explanation]:
        from .explain import explain_classes

        if self._gradient_model is None:  # the torch engine's own model, else one built on first use
            from .backends.torch_backend import TorchBackend

            torch_backend = isinstance(self.backend, TorchBackend)
            self._gradient_model = self.backend.model if torch_backend else self.resolved.create_model()
        photo = load_image(image, exif_transpose=self.exif_transpose, max_pixels=self.max_pixels)
        return explain_classes(self._gradient_model, self.config, photo, targets, self.labels)

    def probabilities(self, images: Sequence[ImageSource]) -> np.ndarray:
        """(N, 1000) probabilities; raises ImageError on the first input that cannot be decoded."""
        crops = [self.crop(im) for im in images]
        batches = (np.stack(chunk) for chunk in chunks(crops, self.batch_size))
        out = list(predictions(self.backend, batches))
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def classify(self, images: ImageSource | Sequence[ImageSource], top: int = 5) -> list[list[Prediction]]:
        """Per image, the `top` (index, label, probability) predictions, most likely first."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        return self.top_k(self.probabilities(images), top)

    def classify_iter(self, sources: Iterable[ImageSource], top: int = 5) -> Iterator[Outcome]:
        """Classify a stream in order; an input that fails is reported and the rest go on.

        Decoding runs in worker threads (Pillow releases the GIL) while the backend infers earlier
        batches, so a folder of JPEGs runs near the engine's own speed.
        """
        groups: deque[list[Decoded[ImageSource]]] = deque()  # sent to the backend, not yet answered

        def batches(decoded: Iterable[list[Decoded[ImageSource]]]) -> Iterator[np.ndarray]:
            for group in decoded:
                groups.append(group)
                yield self._stack([d.crop for d in group if d.crop is not None])

        # closing(): an abandoned stream stops its decode threads at once, not when garbage collected.
        with contextlib.closing(self.decode_batches(sources)) as decoded:
            for probs in predictions(self.backend, batches(decoded)):
                ranked = iter(self.top_k(probs, top))
                for d in groups.popleft():
                    if d.error is not None:
                        yield Outcome(describe(d.item), error=d.error)
                    else:
                        yield Outcome(describe(d.item), predictions=next(ranked))

    def decode_batches(self, items: Iterable[T], source: Callable[[T], ImageSource] | None = None
                       ) -> Iterator[list[Decoded[T]]]:
        """`items` in order, in lists of `batch_size`, each with its crop or the one-line reason it has none.

        `source(item)` gives the image (a path, bytes, ...; default: the item itself) and runs in the
        decode threads, so reading files happens there too. About two batches are decoded ahead of the
        consumer: decoding overlaps inference, and a million items never sit in memory. This is the one
        decode loop under classify_iter and `effnet eval`.
        """
        def decode(item: T) -> Decoded[T]:
            try:
                return Decoded(item, crop=self.crop(item if source is None else source(item)))
            except EffnetError as exc:  # one bad input is reported in its place; the stream goes on
                return Decoded(item, error=str(exc))

        with ThreadPoolExecutor(self.decode_workers) as pool:
            ahead = 2 * self.batch_size + self.decode_workers
            yield from chunks(bounded_map(pool, decode, items, ahead), self.batch_size)

    def _stack(self, crops: list[np.ndarray]) -> np.ndarray:
        """(N, S, S, 3); N is 0 for a batch whose every file failed (it keeps its place in the stream)."""
        size = self.config.input_size
        return np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
