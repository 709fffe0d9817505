"""Decoding images into the crops every engine takes: bytes or paths -> upright RGB photo (Pillow, with
limits) -> the accuracy checker's bicubic resize and centre crop -> (S, S, 3) uint8, pixel for pixel.

`PillowDecoder` is that pipeline in worker threads, as a stream of batches that never holds more than a
few batches in memory; a decoder that works on the GPU is a second implementation of `Decoder`.
"""
from __future__ import annotations

import errno
import io
import os
import queue
import stat
import struct
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, BinaryIO, Generic, Protocol, TypeVar, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import EffnetError, ImageError
from .filenames import escape_name
from .files import file_kind
from .preprocessing import Interpolation, PreprocessConfig, crop_geometry, normalize

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class EncodedImage:
    """An encoded file's bytes already read (from an object store, or hashed first), with the name its
    messages should give: the path or URI the user knows, not '<bytes>'."""

    data: bytes
    name: str


ImageSource = Union[str, os.PathLike, bytes, EncodedImage, Image.Image, np.ndarray]


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
        if isinstance(source, EncodedImage):
            data, name = source.data, f"'{escape_name(source.name)}'"
        else:
            data, name = bytes(source), "<bytes>"
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


def preprocess_image(
    source: ImageSource, config: PreprocessConfig, *, exif_transpose: bool = True
) -> np.ndarray:
    """Decode, resize, crop and normalise one image into a float32 (1, 3, S, S) RGB batch."""
    image = load_image(source, exif_transpose=exif_transpose)
    return normalize(center_crop(image, config), config)[np.newaxis]


def pillow_pixel_limit() -> int | None:
    """The pixel count above which Pillow itself refuses to open an image: twice Image.MAX_IMAGE_PIXELS
    (read now, so an application that changes it is followed); None if the application disabled it.
    Below that Pillow only warns, from Image.MAX_IMAGE_PIXELS (about 89.5 MP) up."""
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


def _load_path(path: str, exif_transpose: bool, max_pixels: int | None = None) -> Image.Image:
    name = f"'{escape_name(path)}'"
    try:
        file = open_regular_file(path)
    except FileNotFoundError:
        raise ImageError(f"cannot read image {name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"cannot read image {name}: it is a directory, not an image file") from None
    except NotRegularFileError as exc:
        raise ImageError(f"cannot read image {name}: it is {exc.kind}, not an image file") from None
    except OSError as exc:
        raise ImageError(f"cannot read image {name}: {_one_line(exc.strerror or str(exc))}") from exc
    with file:
        if os.fstat(file.fileno()).st_size == 0:
            raise ImageError(f"cannot read image {name}: the file is empty (0 bytes)")
        return _decode(file, name, exif_transpose, max_pixels)


class NotRegularFileError(OSError):
    """A path that names a FIFO, a device or a socket: reading one may wait forever (a FIFO with no writer)
    or never end (/dev/zero)."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"{kind} is not a regular file: {path}")
        self.kind = kind


def open_regular_file(path: str | os.PathLike[str]) -> BinaryIO:
    """`path` opened for reading if it is a regular file (links followed); NotRegularFileError otherwise.

    Opened without blocking, so that a FIFO is refused at once instead of waiting for a writer; a file held
    by another process's lease (O_NONBLOCK makes that EWOULDBLOCK) is then opened as any reader would."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except BlockingIOError:
        fd = os.open(path, os.O_RDONLY)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
            raise NotRegularFileError(os.fspath(path), file_kind(mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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
        raise ImageError(_bomb_message(name, exc), params=("max_pixels",)) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"cannot read image {name}: not an image file, or a format Pillow cannot read") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"cannot read image {name}: {_describe(exc)}") from exc
    # The header's size, before any pixel is decoded: a bomb costs only the few bytes read so far.
    if limit is not None and image.width * image.height > limit:
        image.close()
        raise ImageError(_over_limit_message(name, image.size, limit, max_pixels is None), params=("max_pixels",))
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
        raise ImageError(_bomb_message(name, exc), params=("max_pixels",)) from exc
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
            f"({_one_line(str(exc))}); Pillow refuses this size itself, whatever max_pixels= says")


def _over_limit_message(name: str, size: tuple[int, int], limit: int, default: bool) -> str:
    width, height = size
    which = "the default limit (Pillow's)" if default else "the limit"
    return (f"cannot read image {name}: {width}x{height} is {width * height:,} pixels, over {which} of {limit:,}, "
            f"refused as a possible decompression bomb before decoding; if the file is a real photo, allow it "
            f"with max_pixels={width * height}")


def _describe(exc: BaseException) -> str:
    text = _one_line(str(exc))
    if "truncated" in text:
        return f"{text}; the file is incomplete (an interrupted download or copy?)"
    return f"cannot decode it ({type(exc).__name__}: {text})" if text else f"cannot decode it ({type(exc).__name__})"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---- the decode stream ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Decoded(Generic[T]):
    """One item of a decode stream: its (S, S, 3) uint8 crop, or the error that says why it has none."""

    item: T
    crop: Any = None
    failure: EffnetError | None = None

    @property
    def error(self) -> str | None:
        return None if self.failure is None else str(self.failure)


class Decoder(Protocol):
    """Turns images into the (S, S, 3) uint8 RGB crops a backend takes, one stream of batches at a time.

    `PillowDecoder` is the accuracy checker's exact pipeline on CPUs; a decoder on a GPU hands back crops
    that already live there (the CUDA backend takes them as they are)."""

    preprocess: PreprocessConfig
    exif_transpose: bool
    workers: int  # threads reading (and, on CPUs, decoding) ahead of the engine

    @property
    def input_size(self) -> int: ...

    def describe(self) -> dict[str, str]:
        """How images are decoded, as plain data for reports and headers."""
        ...

    def photo(self, image: ImageSource) -> Image.Image:
        """The upright RGB photo the crop is cut from (what an explanation is drawn on)."""
        ...

    def crop(self, image: ImageSource) -> Any:
        """One input's crop; raises ImageError when it cannot be decoded."""
        ...

    def stack(self, crops: list[Any]) -> Any:
        """(N, S, S, 3) from N crops; N may be 0 (a batch whose every file failed keeps its place)."""
        ...

    def batches(self, items: Iterable[T], batch_size: int, source: Callable[[T], ImageSource] | None = None
                ) -> Iterator[list[Decoded[T]]]:
        """`items` in order, in lists of `batch_size`, each with its crop or its failure."""
        ...


class PillowDecoder:
    """The accuracy checker's decoding, pixel for pixel (Pillow decode, bicubic resize, centre crop), in
    `workers` threads (Pillow releases the GIL while it decodes and resizes).

    `exif_transpose` turns photos upright first (the checker does not: `PillowDecoder.checker` keeps it
    off). `max_pixels` refuses files whose header claims more pixels, before decoding (None: Pillow's own
    refusal threshold, see load_image)."""

    def __init__(self, preprocess: PreprocessConfig, *, exif_transpose: bool = True, max_pixels: int | None = None,
                 workers: int | None = None) -> None:
        self.preprocess = preprocess
        self.exif_transpose = exif_transpose
        self.max_pixels = max_pixels
        self.workers = workers or min(4, os.cpu_count() or 1)

    @classmethod
    def checker(cls, preprocess: PreprocessConfig, *, workers: int | None = None) -> PillowDecoder:
        """Exactly what the OMZ accuracy checker feeds the network: no EXIF orientation (what `effnet eval` uses)."""
        return cls(preprocess, exif_transpose=False, workers=workers)

    @property
    def input_size(self) -> int:
        return self.preprocess.input_size

    def describe(self) -> dict[str, str]:
        return {"decode": "exact"}

    def photo(self, image: ImageSource) -> Image.Image:
        return load_image(image, exif_transpose=self.exif_transpose, max_pixels=self.max_pixels)

    def crop(self, image: ImageSource) -> np.ndarray:
        return center_crop(self.photo(image), self.preprocess)

    def stack(self, crops: list[np.ndarray]) -> np.ndarray:
        size = self.input_size
        return np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)

    def batches(self, items: Iterable[T], batch_size: int, source: Callable[[T], ImageSource] | None = None
                ) -> Iterator[list[Decoded[T]]]:
        """`source(item)` gives the image (a path, bytes, ...; default: the item itself) and runs in the decode
        threads, so reading files happens there too. About two batches are decoded ahead of the consumer:
        decoding overlaps inference, and a million items never sit in memory."""
        def decode(item: T) -> Decoded[T]:
            try:
                return Decoded(item, crop=self.crop(item if source is None else source(item)))
            except EffnetError as exc:  # one bad input is reported in its place; the stream goes on
                return Decoded(item, failure=exc)

        with ReaderThreads(self.workers, "effnet-decode") as pool:
            ahead = 2 * batch_size + self.workers
            yield from chunks(bounded_map(pool, decode, items, ahead), batch_size)


class ReaderThreads(Executor):
    """Threads that read and decode files for a stream, as an Executor. Daemon threads, never waited for:
    a thread stuck in a read (a hung network mount, a file another process holds a lease on) must not keep
    effnet alive after SIGTERM or Ctrl-C. ThreadPoolExecutor cannot do this: its shutdown and the
    interpreter's exit both join its workers, however long their read takes.

    Leaving the `with` block cancels the tasks not started yet; those running end on their own and their
    results are dropped."""

    def __init__(self, workers: int, name: str = "effnet-read") -> None:
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        future: Future[R] = Future()
        self._tasks.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = False, *, cancel_futures: bool = True) -> None:
        """Cancel queued tasks (unless `cancel_futures` is False) and let the threads end once idle. `wait`
        is accepted for the Executor interface and ignored: waiting is what this class exists to avoid."""
        if cancel_futures:
            while True:
                try:
                    task = self._tasks.get_nowait()
                except queue.Empty:
                    break
                if task is not None:
                    task[0].cancel()
        for _ in self._threads:
            self._tasks.put(None)

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            _run(*task)
            del task  # an idle thread keeps nothing of its last task alive


def _run(future: Future, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    if not future.set_running_or_notify_cancel():  # cancelled while it waited
        return
    try:
        future.set_result(fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
        future.set_exception(exc)


def bounded_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """pool.map, in order, but with at most `ahead` items in flight: a million files never sit in memory."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


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
