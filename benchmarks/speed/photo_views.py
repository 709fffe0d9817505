"""Real photos for agreement measurements, split by photo: calibration, validation (what accuracy control
tunes on) and test (what is reported). Views of one photo never cross groups, so a test figure is on
photos the quantizer never saw.

The photos are scikit-image's bundled ones (colour and grey, objects and textures): few ImageNet classes,
many low-confidence answers, so agreement here is harder to keep than on ImageNet's own images.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

COLOUR = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field", "immunohistochemistry",
          "retina", "colorwheel", "logo")
GREY = ("camera", "clock", "coins", "moon", "brick", "grass", "gravel", "cell", "page", "text")
GROUPS = ("calibration", "validation", "test")


@dataclass(frozen=True)
class PhotoViews:
    """uint8 (N, S, S, 3) RGB views per group, and the photos each group was cut from."""

    calibration: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    photos: dict[str, tuple[str, ...]]


def load_photo(name: str) -> Image.Image:
    import skimage.data as data

    pixels = np.asarray(data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)())
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, -1)
    return Image.fromarray(np.ascontiguousarray(pixels[..., :3]).astype(np.uint8))


def views(photo: Image.Image, count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The centre square, then random crops (15-100 % of the area, aspect 3:4 to 4:3, half of them
    mirrored), each resized to `size` with Pillow's bicubic filter."""
    w, h = photo.size
    side = min(w, h)
    square = photo.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
    out = [np.asarray(square.resize((size, size), Image.Resampling.BICUBIC))]
    while len(out) < count:
        area = rng.uniform(0.15, 1.0) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if not (16 <= cw <= w and 16 <= ch <= h):
            continue
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        view = photo.crop((x, y, x + cw, y + ch)).resize((size, size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(np.asarray(view))
    return out


def photo_views(size: int, per_photo: tuple[int, int, int] = (44, 24, 32), seed: int = 0) -> PhotoViews:
    """20 photos, colour and grey alternating, dealt round-robin into the three groups (7, 7, 6 photos),
    `per_photo` views of each photo of a group."""
    rng = np.random.default_rng(seed)
    names = [n for pair in zip(COLOUR, GREY) for n in pair]
    groups: list[list[np.ndarray]] = [[], [], []]
    for i, name in enumerate(names):
        groups[i % 3] += views(load_photo(name), per_photo[i % 3], size, rng)
    photos = {g: tuple(names[i::3]) for i, g in enumerate(GROUPS)}
    return PhotoViews(*(np.stack(g) for g in groups), photos=photos)
