"""Decoding on the GPU (`decode="gpu"`): JPEG files decoded by nvJPEG (torchvision.io.decode_jpeg on the
device), resized there with antialiasing (the filter Pillow uses when it shrinks: bicubic or bilinear, as the
weights want) and centre-cropped with the accuracy checker's geometry, so the crops never leave the GPU.

Faster than the exact pipeline and close to it, not pixel-exact: nvJPEG's IDCT and the GPU's float resize
differ from libjpeg and Pillow's fixed-point filter by about half a level per pixel on average. Files that
are not JPEG, or that nvJPEG refuses, take the exact Pillow decode and are resized the same way; the size
limit (`max_pixels`) is checked from the file's header before anything is decoded, as on the exact path.
"""
from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .decode import (
    Decoded,
    EncodedImage,
    ImageSource,
    PillowDecoder,
    ReaderThreads,
    bounded_map,
    chunks,
    load_image,
    open_regular_file,
    pillow_pixel_limit,
)
from .errors import EffnetError, ImageError
from .filenames import escape_name
from .preprocessing import Interpolation, PreprocessConfig, crop_geometry

T = TypeVar("T")
_MODES = {Interpolation.BICUBIC: "bicubic", Interpolation.BILINEAR: "bilinear"}


class DeviceDecoder:
    """Images -> (S, S, 3) uint8 crops on `device`. Reading files runs in `workers` threads; decoding and
    resizing run on the device, a batch at a time. nvJPEG needs torchvision with CUDA; without it (or on a
    CPU device) the photo is decoded by Pillow and only resized on the device."""

    def __init__(self, preprocess: PreprocessConfig, device: str, *, exif_transpose: bool = True,
                 max_pixels: int | None = None, workers: int | None = None) -> None:
        self.preprocess = preprocess
        self.exif_transpose = exif_transpose
        self.device = torch.device(device)
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._exact = PillowDecoder(preprocess, exif_transpose=exif_transpose, max_pixels=max_pixels, workers=1)
        self._limit = pillow_pixel_limit() if max_pixels is None else max_pixels
        self._nvjpeg = _nvjpeg() if self.device.type == "cuda" else None

    @property
    def input_size(self) -> int:
        return self.preprocess.input_size

    def describe(self) -> dict[str, str]:
        return {"decode": "gpu" if self._nvjpeg is not None else "device-resize"}

    def photo(self, image: ImageSource) -> Image.Image:
        return self._exact.photo(image)

    def crop(self, image: ImageSource) -> torch.Tensor:
        (crop,) = self._crops([_bytes_of(image)], [image])  # raises the exact path's ImageError for a bad path
        if isinstance(crop, EffnetError):
            raise crop
        return crop

    def stack(self, crops: list[torch.Tensor]) -> torch.Tensor:
        if crops:
            return torch.stack(crops)
        size = self.input_size
        return torch.zeros((0, size, size, 3), dtype=torch.uint8, device=self.device)

    def batches(self, items: Iterable[T], batch_size: int, source: Callable[[T], ImageSource] | None = None
                ) -> Iterator[list[Decoded[T]]]:
        """Files are read ahead in threads; each batch is decoded on the device in one call where it can."""
        def read(item: T) -> tuple[T, ImageSource, bytes | ImageSource | EffnetError]:
            image = item if source is None else source(item)
            try:
                return item, image, _bytes_of(image)
            except EffnetError as exc:
                return item, image, exc

        with ReaderThreads(self.workers, "effnet-read") as pool:
            for group in chunks(bounded_map(pool, read, items, 2 * batch_size + self.workers), batch_size):
                todo = [i for i, (_, _, data) in enumerate(group) if not isinstance(data, EffnetError)]
                crops = self._crops([group[i][2] for i in todo], [group[i][1] for i in todo])
                results: list[torch.Tensor | EffnetError] = [data for _, _, data in group]  # type: ignore[misc]
                for i, crop in zip(todo, crops):
                    results[i] = crop
                yield [Decoded(item, failure=r) if isinstance(r, EffnetError) else Decoded(item, crop=r)
                       for (item, _, _), r in zip(group, results)]

    # ---- decoding and resizing on the device ----
    def _crops(self, datas: list, originals: list) -> list[torch.Tensor | EffnetError]:
        photos = self._photos(datas, originals)
        return [p if isinstance(p, EffnetError) else self._resize_crop(p) for p in photos]

    def _photos(self, datas: list, originals: list) -> list[torch.Tensor | EffnetError]:
        """(3, H, W) uint8 upright RGB on the device per input, or its ImageError: JPEGs through nvJPEG (one
        call for the batch), the rest (and any JPEG nvJPEG refuses) through Pillow."""
        out: list[torch.Tensor | EffnetError | None] = [None] * len(datas)
        jpegs = []
        for i, data in enumerate(datas):
            problem = self._header_problem(data, originals[i]) if isinstance(data, bytes) else None
            if problem is not None:
                out[i] = problem
            elif self._nvjpeg is not None and isinstance(data, bytes) and data[:3] == b"\xff\xd8\xff":
                jpegs.append(i)
        if jpegs:
            decoded = self._nvjpeg_batch([datas[i] for i in jpegs])
            for i, image in zip(jpegs, decoded):
                out[i] = image  # None where nvJPEG refused it: Pillow below says why, or decodes it
        for i, data in enumerate(datas):
            if out[i] is None:
                try:
                    photo = self._exact.photo(data if not isinstance(data, bytes) else
                                              EncodedImage(data, _name(originals[i])))
                except EffnetError as exc:
                    out[i] = exc
                    continue
                array = torch.from_numpy(np.array(photo)).permute(2, 0, 1)  # np.array: a copy torch may write
                out[i] = array.to(self.device, non_blocking=True)
        return out  # type: ignore[return-value]

    def _header_problem(self, data: bytes, original: object) -> ImageError | None:
        """The pixel limit, from the header alone (a decompression bomb costs only the bytes read)."""
        if self._limit is None:
            return None
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except Exception:  # noqa: BLE001 - not an image Pillow knows: the decode says why
            return None
        if width * height > self._limit:
            try:
                self._exact.photo(EncodedImage(data, _name(original)))  # the exact path's own message
            except ImageError as exc:
                return exc
        return None

    def _nvjpeg_batch(self, datas: list[bytes]) -> list[torch.Tensor | None]:
        decode_jpeg, mode = self._nvjpeg
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        try:
            return list(decode_jpeg(tensors, mode=mode, device=self.device,
                                    apply_exif_orientation=self.exif_transpose))
        except RuntimeError:  # one bad file fails the batch call: decode one by one to find it
            out: list[torch.Tensor | None] = []
            for t in tensors:
                try:
                    out.append(decode_jpeg(t, mode=mode, device=self.device,
                                           apply_exif_orientation=self.exif_transpose))
                except RuntimeError:
                    out.append(None)
            return out

    def _resize_crop(self, photo: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 -> the checker's resize (shorter side to resize_size, longer side truncated) and
        centre crop, as (S, S, 3) uint8; black where the crop leaves a small photo, as Pillow pads."""
        _, height, width = photo.shape
        resized_w, resized_h, top, left = crop_geometry(width, height, self.preprocess)
        x = photo[None].float()
        x = F.interpolate(x, size=(resized_h, resized_w), mode=_MODES[self.preprocess.interpolation],
                          antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255).to(torch.uint8)[0]
        size = self.input_size
        bottom, right = top + size, left + size
        crop = x[:, max(top, 0):min(bottom, resized_h), max(left, 0):min(right, resized_w)]
        if crop.shape[1:] != (size, size):
            crop = F.pad(crop, (max(-left, 0), max(right - resized_w, 0), max(-top, 0), max(bottom - resized_h, 0)))
        return crop.permute(1, 2, 0).contiguous()


def _nvjpeg() -> tuple[Callable, object] | None:
    """torchvision's GPU JPEG decoder and its RGB mode, where torchvision (with CUDA) is installed."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except (ImportError, RuntimeError):
        return None
    return decode_jpeg, ImageReadMode.RGB


def _bytes_of(image: ImageSource) -> bytes | ImageSource:
    """A file's bytes (read here, in a reading thread), encoded bytes as they are; images already in memory
    (PIL images, arrays) pass through to the Pillow path."""
    if isinstance(image, EncodedImage):
        return image.data
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            with open_regular_file(path) as file:  # a FIFO or /dev/zero is refused, not read forever
                return file.read()
        except OSError as exc:
            try:
                load_image(path)  # the exact path's message for the same fault
            except ImageError as error:
                raise error from exc
            raise ImageError(f"cannot read image '{escape_name(path)}': {exc.strerror or exc}") from exc
    return image


def _name(original: object) -> str:
    if isinstance(original, EncodedImage):
        return original.name
    return os.fspath(original) if isinstance(original, (str, os.PathLike)) else "<bytes>"
