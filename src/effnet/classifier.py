"""Classifier = Decoder + Backend + labels: images -> crops -> probabilities -> top-k labelled predictions."""
from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .arch import DEFAULT_MODEL
from .backends import Backend, create_backend, predictions
from .contract import ranked
from .decode import Decoded, Decoder, EncodedImage, ImageSource, PillowDecoder, chunks
from .engines import AUTO, EngineChoice, EngineOptions, graph_batch_sizes, resolve_engine
from .errors import EffnetError
from .labels import imagenet_labels
from .resolved import UNSET, ResolvedModel, Weights, resolve

if TYPE_CHECKING:
    from .explain import Explainer, Explanation

DECODERS = ("exact", "gpu")


class Prediction(NamedTuple):
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Outcome:
    """One input of a stream: its predictions, or the failure that says why it could not be classified."""

    source: str
    predictions: list[Prediction] | None = None
    failure: EffnetError | None = None

    @property
    def error(self) -> str | None:
        return None if self.failure is None else str(self.failure)


def describe(source: ImageSource) -> str:
    if isinstance(source, EncodedImage):
        return source.name
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__}>"


class Classifier:
    """ImageNet-1k classification with one of the family's models (B7, the card's, by default): a decoder
    (the accuracy checker's exact pipeline, or one on the GPU) feeding a backend (the fastest installed for the
    device by default: OpenVINO on CPUs, PyTorch compiled on an NVIDIA GPU), and the labels.

    Photos are turned upright by their EXIF orientation first (`exif_transpose=False` keeps the
    accuracy checker's exact behaviour, as `effnet eval` does).
    """

    def __init__(self, model: str | ResolvedModel = DEFAULT_MODEL, weights: Weights = UNSET, *,
                 backend: str | EngineChoice | Backend = AUTO, precision: str | None = None, device: str = AUTO,
                 calibration: str | os.PathLike | None = None, batch_size: int | None = None,
                 exif_transpose: bool = True, decode_workers: int | None = None, max_pixels: int | None = None,
                 decode: str | Decoder = "exact") -> None:
        """`model`: a name (resolved here, once, with `weights`: "imagenet" (default), a path, or None/"random")
        or a ResolvedModel. `backend`: an engine name (torch, onnxruntime, openvino, or auto) run on `device`
        (auto, cpu, cuda, cuda:N) at `precision` (None: the engine's default there), an EngineChoice, or a
        ready Backend. `calibration`: an image folder, for int8. `batch_size`: images per engine call
        (default: 8 on CPUs, 64 on a GPU). `decode`: "exact" (the checker's Pillow pipeline) or "gpu"
        (nvJPEG and resizing on the GPU: faster, not pixel-exact), or a Decoder."""
        engine = None
        if isinstance(backend, (str, EngineChoice)):
            if isinstance(backend, str):  # the top for a Python caller: the CUDA graphs follow the batch size
                options = EngineOptions(batch_sizes=graph_batch_sizes(batch_size))
                backend = resolve_engine(backend, precision, device=device, calibration=calibration, options=options)
            engine = backend  # a missing engine or a GPU that is not there fails before any download
        resolved = resolve(model, weights)
        if engine is not None:
            backend = create_backend(resolved, engine)
        if isinstance(decode, str):
            decode = make_decoder(decode, resolved, backend, exif_transpose=exif_transpose, max_pixels=max_pixels,
                                  workers=decode_workers)
        self._init(resolved, decode, backend, batch_size or (engine.batch_size if engine else 8))

    @classmethod
    def from_parts(cls, resolved: ResolvedModel, decoder: Decoder, backend: Backend, batch_size: int) -> Classifier:
        """A Classifier over parts built elsewhere (a benchmark's timed backend, a server's decoder)."""
        classifier = cls.__new__(cls)
        classifier._init(resolved, decoder, backend, batch_size)
        return classifier

    def _init(self, resolved: ResolvedModel, decoder: Decoder, backend: Backend, batch_size: int) -> None:
        self.resolved = resolved
        self.decoder = decoder
        self.backend = backend
        self.batch_size = batch_size
        self.labels = imagenet_labels()
        self._explainer: Explainer | None = None

    @property
    def name(self) -> str:
        return self.resolved.name

    def describe(self) -> dict[str, Any]:
        """Which model, weights, engine, precision, device and decoder answer: what every output carries."""
        out = {**self.resolved.describe(), "backend": self.backend.name, "precision": self.backend.precision,
               "device": self.backend.device}
        settings = self.backend.settings()
        if "gpu" in settings:
            out["gpu"] = settings["gpu"]
        return {**out, **self.decoder.describe()}

    def top_k(self, probs: np.ndarray, top: int) -> list[list[Prediction]]:
        return [[Prediction(int(i), self.labels[i], float(p[i])) for i in row]
                for p, row in zip(probs, ranked(probs, top))]

    def explain(self, image: ImageSource, target: int | str | None = None) -> Explanation:
        """Grad-CAM of `target` (a class index or label; None: the top-1) on `image`, computed with the
        PyTorch model (gradients) whatever engine answers `classify`; heatmap and overlay on the photo
        as the user sees it (EXIF orientation applied when the decoder applies it)."""
        return self.explainer.explain(image, target)

    def explain_top(self, image: ImageSource, k: int = 5) -> list[Explanation]:
        """Explanations of the `k` most likely classes, most likely first (one forward pass for all)."""
        return self.explainer.explain_top(image, k)

    @property
    def explainer(self) -> Explainer:
        if self._explainer is None:
            from .explain import Explainer

            self._explainer = Explainer(self.resolved, self.decoder, self.backend, self.labels)
        return self._explainer

    def probabilities(self, images: Sequence[ImageSource]) -> np.ndarray:
        """(N, classes) probabilities; raises ImageError on the first input that cannot be decoded."""
        crops = [self.decoder.crop(im) for im in images]
        batches = (self.decoder.stack(chunk) for chunk in chunks(crops, self.batch_size))
        out = list(predictions(self.backend, batches))
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def classify(self, images: ImageSource | Sequence[ImageSource], top: int = 5) -> list[list[Prediction]]:
        """Per image, the `top` (index, label, probability) predictions, most likely first."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        return self.top_k(self.probabilities(images), top)

    def classify_iter(self, sources: Iterable[ImageSource], top: int = 5) -> Iterator[Outcome]:
        """Classify a stream in order; an input that fails is reported and the rest go on.

        The decoder works ahead in its threads while the backend infers earlier batches, so a folder of
        JPEGs runs near the engine's own speed.
        """
        groups: deque[list[Decoded[ImageSource]]] = deque()  # sent to the backend, not yet answered

        def batches(decoded: Iterable[list[Decoded[ImageSource]]]) -> Iterator[Any]:
            for group in decoded:
                groups.append(group)
                yield self.decoder.stack([d.crop for d in group if d.failure is None])

        # closing(): an abandoned stream stops its decode threads at once, not when garbage collected.
        with contextlib.closing(self.decoder.batches(sources, self.batch_size)) as decoded:
            for probs in predictions(self.backend, batches(decoded)):
                answers = iter(self.top_k(probs, top))
                for d in groups.popleft():
                    if d.failure is not None:
                        yield Outcome(describe(d.item), failure=d.failure)
                    else:
                        yield Outcome(describe(d.item), predictions=next(answers))


def make_decoder(kind: str, resolved: ResolvedModel, backend: Backend, *, exif_transpose: bool = True,
                 max_pixels: int | None = None, workers: int | None = None) -> Decoder:
    """The decoder `kind` names ("exact" or "gpu") for `resolved`'s preprocessing; "gpu" decodes on the
    backend's GPU, which must be a CUDA device."""
    if kind == "exact":
        return PillowDecoder(resolved.preprocess, exif_transpose=exif_transpose, max_pixels=max_pixels,
                             workers=workers)
    if kind == "gpu":
        from .decode_gpu import DeviceDecoder

        if not backend.device.startswith("cuda"):
            raise EffnetError(f"decode=gpu decodes on the engine's GPU; this engine runs on {backend.device} "
                              f"(use device=cuda, or decode=exact)", params=("decode", "device"))
        return DeviceDecoder(resolved.preprocess, backend.device, exif_transpose=exif_transpose,
                             max_pixels=max_pixels, workers=workers)
    raise EffnetError(f"unknown decode={kind}; choose one of: {', '.join(DECODERS)}", params=("decode",))
