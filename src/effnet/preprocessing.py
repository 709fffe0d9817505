"""The OMZ accuracy checker's preprocessing as data and arithmetic: the config a set of weights wants, the
resize/crop geometry, and the normalisation (pure functions; decoding and resizing pixels is `decode.py`).

What the checker does for efficientnet-b7-pytorch (models/public/efficientnet-b7-pytorch/accuracy-check.yml
in openvinotoolkit/open_model_zoo: reader pillow_imread; resize size 632, aspect_ratio_scale greater,
use_pillow, BICUBIC; crop size 600, use_pillow; normalization mean/std in 0-255 units), read from
tools/accuracy_checker/openvino/tools/accuracy_checker:

- data_readers: ``Image.open(f)`` then ``np.array(img.convert('RGB'))``; no EXIF rotation, no draft mode.
- preprocessor/resize.py: ``scale_greater`` gives ``(int(632 * w / h), 632)`` unless ``h > w``, then
  ``(632, int(632 * h / w))``: the longer side is truncated, a square image stays 632x632. The Pillow
  resizer is ``Image.fromarray(data).resize((w, h), BICUBIC)`` (default reducing_gap, so no shortcut).
- preprocessor/crop.py with use_pillow: ``i = int(round((h - 600) / 2.))``, ``j = int(round((w - 600) / 2.))``
  with Python's round (half to even), then ``Image.crop((j, i, j + 600, i + 600))``.
- preprocessor/normalization.py: ``(data - mean) / std`` on the uint8 array with Python-float tuples, so
  the arithmetic is float64; the launcher feeds float32, i.e. the float64 result rounded once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

import numpy as np


class Interpolation(Enum):
    BICUBIC = "bicubic"
    BILINEAR = "bilinear"


@dataclass(frozen=True)
class PreprocessConfig:
    """How a set of weights wants its input: resize the shorter side, centre crop, normalise (0-255 units)."""

    input_size: int
    crop_pct: float
    interpolation: Interpolation = Interpolation.BICUBIC
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    @property
    def resize_size(self) -> int:
        """Shorter side before the crop: floor(size / crop_pct), e.g. 632 for B7's 600 / 0.949."""
        return math.floor(self.input_size / self.crop_pct)


def crop_geometry(width: int, height: int, config: PreprocessConfig) -> tuple[int, int, int, int]:
    """(resized width, resized height, top, left) of the checker's crop for a width x height photo."""
    short_side = config.resize_size
    # OMZ scale_greater: int() truncates the longer side; a square takes the second branch (short, short).
    if height > width:
        resized_w, resized_h = short_side, int(short_side * height / width)
    else:
        resized_w, resized_h = int(short_side * width / height), short_side
    # Python's round, half to even as in the checker: a 33-pixel margin starts at 16, a 35-pixel one at 18.
    size = config.input_size
    return resized_w, resized_h, round((resized_h - size) / 2), round((resized_w - size) / 2)


def normalize(crop: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """(crop - mean) / std per channel, channel-first: float32 (3, H, W) from uint8 (H, W, 3)."""
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"normalize expects a uint8 (H, W, 3) array, got {crop.dtype} {crop.shape}")
    table = normalize_table(config.mean, config.std)
    out = np.empty((3, crop.shape[0], crop.shape[1]), dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], crop[:, :, channel], out=out[channel])
    return out


@lru_cache(maxsize=8)
def normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: every channel's normalised value of every 8-bit level, as the checker computes it.

    A uint8 pixel has 256 values, so a lookup table computed in float64 reproduces the checker's float64
    arithmetic bit for bit (on any device) and is faster than float32 arithmetic on the whole crop."""
    levels = np.arange(256, dtype=np.float64)
    table = (levels[None, :] - np.asarray(mean, np.float64)[:, None]) / np.asarray(std, np.float64)[:, None]
    return table.astype(np.float32)
