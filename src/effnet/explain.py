"""Grad-CAM (Selvaraju et al. 2017) on the torch model: which part of the photo drove a class's logit.

The map is taken on the last feature map (``act2``, the head activation before global pooling), with the
class logit (pre-softmax) as the score, then mapped back from the centre crop the network saw onto the
photo as drawn: its own pixel grid, scaled down to at most OVERLAY_MAX_PIXELS, zero outside the crop. The
backbone runs without autograd: the gradient of the logit with respect to that feature map only depends on
the head, so only the head is differentiated. Past decoding, the cost is bounded whatever the photo's size:
the network sees its fixed crop, and the heatmap and overlay live on the bounded drawing grid.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from .contract import ranked
from .decode import ImageSource, center_crop
from .errors import EffnetError
from .labels import imagenet_labels
from .model import EfficientNet
from .preprocessing import PreprocessConfig, crop_geometry, normalize

if TYPE_CHECKING:
    from torch import nn

    from .backends import Backend
    from .decode import Decoder
    from .resolved import ResolvedModel

# How strongly the colour map covers the photo inside the crop (outside, the photo is left as it is).
OVERLAY_ALPHA = 0.5
# The most pixels an overlay (and its heatmap) has: larger photos are drawn scaled down to this, so that a
# 49 MP photo costs a few tens of MB past its decoding instead of gigabytes of full-size float maps.
OVERLAY_MAX_PIXELS = 2_000_000

StopCheck = Callable[[], None]  # called between an explanation's steps; what it raises ends the explanation


@dataclass(frozen=True)
class Explanation:
    """One class's Grad-CAM: heatmap in [0, 1] on the overlay's (h, w) grid and the photo with it blended in.
    That grid is the photo's own up to OVERLAY_MAX_PIXELS; a larger photo is drawn scaled down to it."""

    index: int
    label: str
    probability: float
    heatmap: np.ndarray
    overlay: Image.Image


class Explainer:
    """Grad-CAM for a model served by a decoder and a backend: the backend's own torch module where it runs
    one, else a torch model built on first use (ONNX Runtime and OpenVINO run graphs of their own). The photo
    is decoded as the decoder decodes it (EXIF orientation included), so the map lies on what the user sees."""

    def __init__(self, resolved: ResolvedModel, decoder: Decoder, backend: Backend,
                 labels: Sequence[str] | None = None) -> None:
        self.resolved = resolved
        self.decoder = decoder
        self.backend = backend
        self.labels = imagenet_labels() if labels is None else labels
        self._model: nn.Module | None = None
        self._lock = threading.Lock()

    def explain(self, image: ImageSource, target: int | str | None = None, *,
                check_stop: StopCheck | None = None) -> Explanation:
        """Grad-CAM of `target` (a class index or label; None: the top-1). `check_stop` is called after
        decoding, after the forward pass, before each class map and before each overlay: raise from it to
        end the explanation there (a deadline, a caller who left)."""
        targets = 1 if target is None else [resolve_target(target, self.labels)]
        return self._explain(image, targets, check_stop)[0]

    def explain_top(self, image: ImageSource, k: int = 5, *, check_stop: StopCheck | None = None
                    ) -> list[Explanation]:
        """Explanations of the `k` most likely classes, most likely first (one forward pass for all)."""
        return self._explain(image, max(1, k), check_stop)

    def _explain(self, image: ImageSource, targets: int | list[int], check_stop: StopCheck | None
                 ) -> list[Explanation]:
        with self._lock:  # one model built, even when two threads ask at once
            if self._model is None:
                self._model = self.backend.torch_module or self.resolved.create_model()
        return explain_classes(self._model, self.resolved.preprocess, self.decoder.photo(image), targets,
                               self.labels, check_stop=check_stop)


def resolve_target(target: int | str | None, labels: Sequence[str] | None = None) -> int | None:
    """A class index from an index, a digit string or a label (case-insensitive); None stays None (top-1)."""
    labels = imagenet_labels() if labels is None else labels
    if target is None:
        return None
    if isinstance(target, str) and (digits := target.strip()).isascii() and digits.isdigit():
        # Only ASCII digits are an index ('²' and Arabic-Indic '٣' are not); a number longer than the largest
        # index is refused by its length, before int() would spend time (or raise) on thousands of digits.
        digits = digits.lstrip("0") or "0"
        if len(digits) > len(str(len(labels) - 1)):
            shown = digits if len(digits) <= 12 else f"{digits[:6]}...{digits[-3:]} ({len(digits)} digits)"
            raise EffnetError(f"class index {shown} is out of range: give 0..{len(labels) - 1} or a label")
        target = int(digits)
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if not 0 <= target < len(labels):
            raise EffnetError(f"class index {target} is out of range: give 0..{len(labels) - 1} or a label")
        return int(target)
    if not isinstance(target, str):
        raise EffnetError(f"target must be a class index or a label, got {type(target).__name__}")
    wanted = " ".join(target.split()).casefold()
    hits = [i for i, name in enumerate(labels) if name.casefold() == wanted]
    if not hits:
        raise EffnetError(f"unknown label {target!r}: give an ImageNet label such as 'espresso', or an index")
    if len(hits) > 1:  # ImageNet has a few, e.g. 'crane' is both a bird (134) and a machine (517)
        raise EffnetError(f"label {target!r} names several classes ({', '.join(map(str, hits))}): give the index")
    return hits[0]


def gradcam(model: EfficientNet, batch: torch.Tensor, target: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM on the (1, 3, S, S) `batch`: the raw (h, w) map at feature resolution and the 1000 logits."""
    features, logits = head_features(model, batch)
    index = int(logits.argmax()) if target is None else target
    return class_map(model, features, index), logits


def head_features(model: EfficientNet, batch: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """The last feature map (1, C, h, w) and the 1000 logits: one forward pass serves every class's map.

    Leaves the model's train/eval flags as they were, registers no hooks, and works when the caller is
    under ``torch.inference_mode()`` or ``torch.no_grad()``.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()  # BatchNorm must use its running statistics, and dropout must be off
    try:
        with torch.inference_mode(False), torch.no_grad():
            features = model.forward_features(batch.clone())  # clone: `batch` may be an inference tensor
            logits = model.forward_head(features)[0]
    finally:
        for module, training in modes.items():
            module.training = training
    return features, logits.float().cpu().numpy()


def class_map(model: EfficientNet, features: torch.Tensor, index: int) -> np.ndarray:
    """Grad-CAM of class `index` on `features` (from `head_features`): ReLU(sum_k alpha_k A_k)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            features = features.detach().requires_grad_(True)
            logit = model.forward_head(features)[0, index]
            (grad,) = torch.autograd.grad(logit, features)  # to `features` only: no .grad on params
        weights = grad[0].mean((1, 2))  # alpha_k: spatial mean of d(logit)/d(A_k)
        cam = torch.relu(torch.einsum("k,khw->hw", weights, features.detach()[0]))
    finally:
        for module, training in modes.items():
            module.training = training
    return cam.float().cpu().numpy()


def explain(model: EfficientNet, config: PreprocessConfig, image: Image.Image, target: int | str | None = None,
            labels: Sequence[str] | None = None) -> Explanation:
    """Grad-CAM of `target` (index or label; None for the top-1 class) on an upright RGB photo."""
    labels = imagenet_labels() if labels is None else labels
    index = resolve_target(target, labels)
    (explanation,) = explain_classes(model, config, image, [index] if index is not None else 1, labels)
    return explanation


def explain_classes(model: EfficientNet, config: PreprocessConfig, image: Image.Image,
                    targets: Sequence[int] | int, labels: Sequence[str] | None = None, *,
                    check_stop: StopCheck | None = None) -> list[Explanation]:
    """One Explanation per class index in `targets`, or for the top `targets` classes when it is an int;
    the network's body runs once for all of them. `check_stop`: see Explainer.explain."""
    labels = imagenet_labels() if labels is None else labels
    check = check_stop or _carry_on
    image = image if image.mode == "RGB" else image.convert("RGB")
    check()
    crop = normalize(center_crop(image, config), config)[np.newaxis]
    param = next(model.parameters())
    with torch.inference_mode(False):
        batch = torch.from_numpy(crop).to(device=param.device, dtype=param.dtype)
    features, logits = head_features(model, batch)
    shifted = np.exp(logits.astype(np.float64) - logits.max())
    probabilities = shifted / shifted.sum()
    if isinstance(targets, int):
        targets = ranked(logits, targets).tolist()
    drawn: Image.Image | None = None  # the photo on the overlay's grid, scaled once for every class
    out = []
    for index in targets:
        check()
        cam = class_map(model, features, index)
        check()
        if drawn is None:
            size = overlay_size(image.width, image.height)
            drawn = image if size == image.size else image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
        heatmap, inside = to_photo(cam, image.size, drawn.size, config)
        peak = float(heatmap.max())
        heatmap = heatmap / peak if peak > 0 else np.zeros_like(heatmap)
        out.append(Explanation(index=index, label=labels[index], probability=float(probabilities[index]),
                               heatmap=heatmap, overlay=overlay(drawn, heatmap, inside)))
    return out


def _carry_on() -> None:
    pass


def overlay_size(width: int, height: int, max_pixels: int = OVERLAY_MAX_PIXELS) -> tuple[int, int]:
    """The (width, height) a photo is drawn at: its own up to `max_pixels`, else scaled down to fit, aspect kept."""
    if width * height <= max_pixels:
        return width, height
    scale = (max_pixels / (width * height)) ** 0.5
    return max(1, int(width * scale)), max(1, int(height * scale))


def to_photo(cam: np.ndarray, photo_size: tuple[int, int], grid_size: tuple[int, int], config: PreprocessConfig
             ) -> tuple[np.ndarray, np.ndarray]:
    """Map a feature-resolution map onto a (width, height) `grid_size` grid spanning the photo of `photo_size`
    (the photo's own, or the scaled-down one it is drawn on): float32 (h, w), zero outside the crop, and
    that mask.

    Each grid pixel centre goes photo -> resized image -> crop (the checker's offsets) -> feature grid
    and is read there bilinearly, which is the crop-size bilinear upsample sampled at that point. Being
    separable, it is two small matrix products: the cost is the grid's, never the crop's or the photo's.
    """
    resized_w, resized_h, top, left = crop_geometry(*photo_size, config)
    size = config.input_size
    rows, row_in = _axis_weights(grid_size[1], resized_h, top, size, cam.shape[0])
    cols, col_in = _axis_weights(grid_size[0], resized_w, left, size, cam.shape[1])
    heatmap = rows @ (cam.astype(np.float64) @ cols.T).astype(np.float32)  # float32 at the grid's size
    return np.maximum(heatmap, 0.0, out=heatmap), row_in[:, None] & col_in[None, :]


def _axis_weights(length: int, resized: int, offset: int, crop: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    # Pixel-centre convention (as Pillow's resize and align_corners=False): grid pixel i of `length` covers
    # resized coordinate (i + 0.5) * resized / length; in the crop that is minus the offset.
    at = (np.arange(length) + 0.5) * (resized / length) - offset
    inside = (at >= 0) & (at < crop)
    cell = np.clip(at * (cells / crop) - 0.5, 0, cells - 1)  # in feature cells, clamped at the border
    low = np.floor(cell).astype(np.int64)
    high = np.minimum(low + 1, cells - 1)
    frac = cell - low
    weights = np.zeros((length, cells), np.float32)
    np.add.at(weights, (np.arange(length), low), 1 - frac)
    np.add.at(weights, (np.arange(length), high), frac)
    weights[~inside] = 0
    return weights, inside


def colormap(values: np.ndarray) -> np.ndarray:
    """Jet-like colours for values in [0, 1]: uint8 (..., 3), blue (cold) -> cyan -> yellow -> red (hot)."""
    x = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # where red, green and blue each peak
    return (np.clip(1.5 - np.abs(4 * x - 4 * centres), 0, 1) * 255 + 0.5).astype(np.uint8)


_COLOURS = colormap(np.linspace(0.0, 1.0, 256))  # the colour map as a 256-entry table: 3 bytes a pixel to look up


def overlay(image: Image.Image, heatmap: np.ndarray, inside: np.ndarray | None = None) -> Image.Image:
    """The photo (on the heatmap's grid) with the heatmap's colours blended in; left untouched outside the
    crop (`inside` False). Works in 8-bit images: a few bytes a pixel, no float copies of the photo."""
    photo = image if image.mode == "RGB" else image.convert("RGB")
    if photo.size != heatmap.shape[::-1]:
        raise ValueError(f"overlay: photo {photo.size[0]}x{photo.size[1]} is not on the heatmap's grid "
                         f"{heatmap.shape[1]}x{heatmap.shape[0]}")
    levels = np.clip(heatmap, 0.0, 1.0)
    levels *= 255
    levels += 0.5
    colours = Image.fromarray(_COLOURS[levels.astype(np.uint8)], "RGB")
    blended = Image.blend(photo, colours, OVERLAY_ALPHA)
    if inside is None:
        return blended
    return Image.composite(blended, photo, Image.fromarray(inside.view(np.uint8) * np.uint8(255), "L"))
