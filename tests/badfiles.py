"""Broken inputs the way they turn up in real folders: empty, truncated, not an image, a bomb."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

from PIL import Image


def png_bomb(path: Path, side: int = 100_000) -> Path:
    """A tiny PNG whose header claims side x side pixels: far over Pillow's decompression-bomb limit."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", side, side)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    path.write_bytes(bytes(data))
    return path


def make_bad_files(folder: Path, good_jpeg: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"empty": folder / "empty.jpg", "truncated": folder / "truncated.jpg",
             "text": folder / "notes.png", "bomb": folder / "bomb.png"}
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(good_jpeg.read_bytes()[:2000])
    files["text"].write_text("this is not an image\n")
    png_bomb(files["bomb"])
    return files
