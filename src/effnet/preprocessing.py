"""Image decoding and the OMZ accuracy checker's preprocessing, pixel for pixel.

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

import errno
import io
import math
import os
import stat
import struct
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import EffnetError, ImageError


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


@dataclass(frozen=True)
class EncodedImage:
    """An encoded file's bytes already read (from an object store, or hashed first), with the name its
    messages should give: the path or URI the user knows, not '<bytes>'."""

    data: bytes
    name: str


ImageSource = Union[str, os.PathLike, bytes, EncodedImage, Image.Image, np.ndarray]

# ---- which files a folder holds (classify, eval, bench, int8 calibration) ----------------------
# The rule: every suffix Pillow can decode counts; names starting with '.' are skipped unless given
# explicitly (`effnet classify .` must not wander into .venv or .git); symbolic links are followed, but
# never back into a folder above them; what cannot be looked at (a broken link, a folder without read
# permission) is reported as a Skipped entry rather than passed over in silence.

@dataclass(frozen=True)
class Skipped:
    """A folder entry that looked like an image (or was a folder) but could not be listed, and why."""

    path: Path
    reason: str


@dataclass
class Listing:
    """What a set of command-line paths expands to: the files to classify, in order, and what was skipped."""

    files: list[Path]
    skipped: list[Skipped]


def image_suffixes() -> frozenset[str]:
    """Lower-case suffixes of every format Pillow can decode here, plugins registered so far included."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if _decodable(fmt))


def image_files(folder: str | os.PathLike, *, skipped: list[Skipped] | None = None) -> list[Path]:
    """The image files under `folder` (by suffix, recursively, hidden entries left out), sorted; empty if
    there are none. Entries that could not be looked at are appended to `skipped` when it is given."""
    files: list[Path] = []
    _walk(Path(folder), image_suffixes(), files, skipped if skipped is not None else [], frozenset())
    return sorted(files)


def folder_images(folder: str | os.PathLike, flag: str, log: Callable[[str], None] = lambda _: None) -> list[Path]:
    """The image files of a folder the user gave with `flag` (--images, --calibration): EffnetError when it
    is not a folder or holds no image; entries that could not be looked at are told to `log`, a line each."""
    if not Path(folder).is_dir():
        raise EffnetError(f"{flag} {folder}: not a folder; give a folder of images")
    skipped: list[Skipped] = []
    files = image_files(folder, skipped=skipped)
    for entry in skipped:
        log(f"skipped {entry.path}: {entry.reason}")
    if not files:
        raise EffnetError(f"{flag} {folder}: no image files (any format Pillow reads) under it")
    return files


def expand_inputs(paths: Iterable[str | os.PathLike]) -> Listing:
    """Command-line paths -> files: a folder becomes its images (see image_files), anything else is kept
    as given (even a hidden or missing file: the classifier then says what is wrong with it)."""
    listing = Listing([], [])
    for given in paths:
        path = Path(given)
        try:
            is_folder = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError:  # missing, or a parent without permission: reported per file when it is read
            is_folder = False
        listing.files.extend(image_files(path, skipped=listing.skipped) if is_folder else [path])
    return listing


def _decodable(fmt: str) -> bool:
    if fmt not in Image.OPEN or fmt == "MPEG":  # MPEG: Pillow reads the size, never the pixels
        return False
    if fmt == "EPS":  # PostScript needs Ghostscript installed
        from PIL import EpsImagePlugin

        return bool(EpsImagePlugin.has_ghostscript())
    factory = Image.OPEN[fmt][0]  # stubs (HDF5, GRIB, BUFR) need a handler that Pillow does not ship
    return not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))


def _walk(folder: Path, suffixes: frozenset[str], files: list[Path], skipped: list[Skipped],
          above: frozenset[tuple[int, int]]) -> None:
    try:
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in above:
            skipped.append(Skipped(folder, "symbolic link loop (it leads back to a folder above it)"))
            return
        with os.scandir(folder) as scan:
            entries = list(scan)
    except OSError as exc:
        skipped.append(Skipped(folder, _os_reason(exc)))
        return
    above = above | {(st.st_dev, st.st_ino)}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        image_name = path.suffix.lower() in suffixes
        try:
            if not entry.is_symlink():
                if entry.is_dir(follow_symlinks=False):
                    _walk(path, suffixes, files, skipped, above)
                elif image_name and entry.is_file(follow_symlinks=False):
                    files.append(path)
                continue
            target = os.stat(path)  # a link: follow it
        except FileNotFoundError:
            if image_name:
                skipped.append(Skipped(path, f"broken symbolic link (to {os.readlink(path)})"))
            continue
        except OSError as exc:
            if image_name or exc.errno == errno.ELOOP:
                skipped.append(Skipped(path, _os_reason(exc)))
            continue
        if stat.S_ISDIR(target.st_mode):
            _walk(path, suffixes, files, skipped, above)
        elif image_name and stat.S_ISREG(target.st_mode):
            files.append(path)


def _os_reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    return (exc.strerror or str(exc)).lower()

_RESAMPLE = {
    Interpolation.BICUBIC: Image.Resampling.BICUBIC,
    Interpolation.BILINEAR: Image.Resampling.BILINEAR,
}
# Modes whose samples are wider than 8 bits; Pillow's convert('RGB') clips them at 255.
_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# Errors Pillow raises for bad input (plugins use SyntaxError and EOFError for malformed headers).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
# catch_warnings swaps the process-wide filter list; serialise our own uses so that concurrent loads
# cannot restore each other's copies and leave the temporary filter behind.
_WARNINGS_LOCK = threading.Lock()


def load_image(source: ImageSource, *, exif_transpose: bool = True, max_pixels: int | None = None) -> Image.Image:
    """Decode a path, bytes, PIL image or uint8 array (HxWx3 RGB or HxW grey) into an RGB PIL image.

    A file or bytes whose header claims more than `max_pixels` pixels is refused before any pixel is
    decoded (a decompression bomb); None means Pillow's own refusal threshold (`pillow_pixel_limit()`,
    about 179 MP), so photos from 100-megapixel cameras decode. Images already in memory are not limited.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, Image.Image):
        return _finish(source, "<image>", exif_transpose)
    if isinstance(source, (bytes, bytearray, memoryview, EncodedImage)):
        data, name = (source.data, f"'{source.name}'") if isinstance(source, EncodedImage) else (bytes(source), "<bytes>")
        if not data:
            raise ImageError(f"cannot read image {name}: no data (0 bytes)")
        return _decode(io.BytesIO(data), name, exif_transpose, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _load_path(os.fspath(source), exif_transpose, max_pixels)
    raise TypeError(f"expected a path, bytes, PIL image or numpy array, got {type(source).__name__}")


def center_crop(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """Resize the shorter side to config.resize_size and centre crop input_size: uint8 (S, S, 3) RGB."""
    if image.mode != "RGB":
        raise ValueError(f"center_crop expects an RGB image (see load_image), got mode {image.mode!r}")
    width, height, top, left = crop_geometry(image.width, image.height, config)
    resized = image.resize((width, height), _RESAMPLE[config.interpolation])
    size = config.input_size
    # Pillow pads with black where the box leaves the image, as the checker does (only if resize < crop).
    return np.array(resized.crop((left, top, left + size, top + size)))


def normalize(crop: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """(crop - mean) / std per channel, channel-first: float32 (3, H, W) from uint8 (H, W, 3)."""
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"normalize expects a uint8 (H, W, 3) array, got {crop.dtype} {crop.shape}")
    table = _normalize_table(config.mean, config.std)
    out = np.empty((3, crop.shape[0], crop.shape[1]), dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], crop[:, :, channel], out=out[channel])
    return out


def preprocess_image(
    source: ImageSource, config: PreprocessConfig, *, exif_transpose: bool = True
) -> np.ndarray:
    """Decode, resize, crop and normalise one image into a float32 (1, 3, S, S) RGB batch."""
    image = load_image(source, exif_transpose=exif_transpose)
    return normalize(center_crop(image, config), config)[np.newaxis]


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


@lru_cache(maxsize=8)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    # A uint8 pixel has 256 values, so a (3, 256) lookup table computed in float64 reproduces the
    # checker's float64 arithmetic bit for bit and is faster than float32 arithmetic on the whole crop.
    levels = np.arange(256, dtype=np.float64)
    table = (levels[None, :] - np.asarray(mean, np.float64)[:, None]) / np.asarray(std, np.float64)[:, None]
    return table.astype(np.float32)


def pillow_pixel_limit() -> int | None:
    """The pixel count above which Pillow itself refuses to open an image: twice Image.MAX_IMAGE_PIXELS
    (read now, so an application that changes it is followed); None if the application disabled it.
    Below that Pillow only warns, from Image.MAX_IMAGE_PIXELS (about 89.5 MP) up."""
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


def _load_path(path: str, exif_transpose: bool, max_pixels: int | None = None) -> Image.Image:
    name = f"'{path}'"
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        raise ImageError(f"cannot read image {name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"cannot read image {name}: it is a directory, not an image file") from None
    except OSError as exc:
        raise ImageError(f"cannot read image {name}: {_one_line(exc.strerror or str(exc))}") from exc
    with file:
        if os.fstat(file.fileno()).st_size == 0:
            raise ImageError(f"cannot read image {name}: the file is empty (0 bytes)")
        return _decode(file, name, exif_transpose, max_pixels)


def _decode(file: BinaryIO, name: str, exif_transpose: bool, max_pixels: int | None = None) -> Image.Image:
    limit = pillow_pixel_limit() if max_pixels is None else max_pixels
    try:
        # Image.open refuses a header over twice Image.MAX_IMAGE_PIXELS and only warns above it: the
        # warning is no refusal (medium-format cameras take 100 MP photos), so it is silenced for this
        # call only, never by changing Pillow's global, and our own limit is applied below. The pixels
        # are decoded later, outside the lock, so concurrent loads still decode in parallel.
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
    except _BOMB_ERRORS as exc:
        raise ImageError(_bomb_message(name, exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"cannot read image {name}: not an image file, or a format Pillow cannot read") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"cannot read image {name}: {_describe(exc)}") from exc
    # The header's size, before any pixel is decoded: a bomb costs only the few bytes read so far.
    if limit is not None and image.width * image.height > limit:
        image.close()
        raise ImageError(_over_limit_message(name, image.size, limit, max_pixels is None))
    # No `with image:` here: closing would also free the pixels of the image we may return.
    return _finish(image, name, exif_transpose)


def _finish(image: Image.Image, name: str, exif_transpose: bool) -> Image.Image:
    """Decode the pixels (errors surface in load(), not open()), turn upright if asked, make RGB."""
    try:
        image.load()
        if image.width == 0 or image.height == 0:
            raise ImageError(f"cannot read image {name}: it has no pixels ({image.width}x{image.height})")
        if exif_transpose:
            image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except _BOMB_ERRORS as exc:  # a few formats check frame sizes again while decoding
        raise ImageError(_bomb_message(name, exc)) from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"cannot read image {name}: {_describe(exc)}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_GREY_MODES:
        # 16-bit grey (and 32-bit 'I', which Pillow also uses for 16-bit PNGs) spans 0..65535; Pillow's
        # convert clips it at 255, which turns most photos white. Scale to 8 bits instead: round(v / 257).
        samples = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        return Image.fromarray(((samples + 128) // 257).astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        # Same RGB values as convert('RGB') (alpha is dropped either way), without Pillow's warning
        # about byte-string transparency in palette images.
        image = image.convert("RGBA")
    # RGBA/LA: alpha is dropped, not composited, exactly as the checker's convert('RGB'); CMYK, 1, L too.
    return image.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise ImageError(f"cannot read image <array>: expected dtype uint8, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ImageError(f"cannot read image <array>: expected shape HxWx3 (RGB) or HxW (grey), got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"cannot read image <array>: it has no pixels (shape {array.shape})")
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def _bomb_message(name: str, exc: BaseException) -> str:
    """Pillow's own refusal (over twice Image.MAX_IMAGE_PIXELS, or a frame checked while decoding)."""
    return (f"cannot read image {name}: too many pixels, refused as a possible decompression bomb "
            f"({_one_line(str(exc))}); Pillow refuses this size itself, whatever --max-pixels says")


def _over_limit_message(name: str, size: tuple[int, int], limit: int, default: bool) -> str:
    width, height = size
    which = "the default limit (Pillow's)" if default else "the limit"
    return (f"cannot read image {name}: {width}x{height} is {width * height:,} pixels, over {which} of {limit:,}, "
            f"refused as a possible decompression bomb before decoding; if the file is a real photo, allow it "
            f"with --max-pixels {width * height} (max_pixels= in Python)")


def _describe(exc: BaseException) -> str:
    text = _one_line(str(exc))
    if "truncated" in text:
        return f"{text}; the file is incomplete (an interrupted download or copy?)"
    return f"cannot decode it ({type(exc).__name__}: {text})" if text else f"cannot decode it ({type(exc).__name__})"


def _one_line(text: str) -> str:
    return " ".join(text.split())
