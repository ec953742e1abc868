"""Unreadable image files for tests: a bad header, a decompression bomb, a truncated file."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def bad_header(path: Path) -> None:
    path.write_bytes(b"GIF89a but not really an image at all")


def bomb(path: Path) -> None:
    """A 100-byte PNG whose header claims 30000 x 30000 pixels."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def truncated(path: Path) -> None:
    """A PNG of noise cut in half (its header is valid)."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    image.save(path, format="PNG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


UNREADABLE: dict[str, Callable[[Path], None]] = {
    "bad header": bad_header,
    "decompression bomb": bomb,
    "truncated": truncated,
}
