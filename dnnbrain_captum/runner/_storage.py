"""The files of a run folder: atomic writes, the result filled in place, chunk files, and the
SHA-256 checksums that make a chunk count as done."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MANIFEST = "manifest.json"
RESULT = "result.npy"
CHUNKS = "chunks"
PARTIAL = "result.partial.npy"  # result.npy while it is being filled in place
DONE_LOG = "result.partial.done"  # one JSON line per chunk whose rows are in PARTIAL
TMP = ".dnnbrain-run.tmp"  # the run's private folder for files being written
_BLOCK = 1 << 24


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, start: int = 0, length: int | None = None) -> str:
    """SHA-256 of ``length`` bytes of ``path`` from ``start`` (default: to the end)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = math.inf if length is None else length
        while left > 0:
            block = f.read(int(min(_BLOCK, left)))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def rows_sha256(rows: np.ndarray) -> str:
    """SHA-256 of the bytes of ``rows`` (C order), as written into the result file."""
    return sha256_bytes(memoryview(np.ascontiguousarray(rows).reshape(-1)).cast("B"))


def chunk_name(k: int) -> str:
    return f"chunk-{k:06d}"


def write_atomic(out: Path, path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through ``write(binary_file)`` into the run's private folder ``out/TMP``, then
    rename over ``path`` (a rename within the destination's file system)."""
    tmp = out / TMP / f"{path.name}.{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def dump_json(out: Path, path: Path, obj: Any) -> None:
    """Strict JSON (no NaN), one line, written atomically."""
    data = (json.dumps(obj, allow_nan=False) + "\n").encode("utf-8")
    write_atomic(out, path, lambda f: f.write(data))


def save_npy(out: Path, path: Path, array: np.ndarray) -> str:
    """Save ``array`` atomically as ``path``; returns the file's SHA-256."""
    with io.BytesIO() as buffer:
        np.save(buffer, array)
        data = buffer.getvalue()
    write_atomic(out, path, lambda f: f.write(data))
    return sha256_bytes(data)


def remove_chunk_files(out: Path, n_chunks: int) -> None:
    """Remove the chunk files of chunks ``0 .. n_chunks - 1`` by their exact names, then
    ``chunks/`` if that leaves it empty (it may hold something we did not write)."""
    folder = out / CHUNKS
    if not folder.is_dir():
        return
    for k in range(n_chunks):
        for suffix in (".json", ".npy"):
            (folder / f"{chunk_name(k)}{suffix}").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def npy_header(f: BinaryIO, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of an open ``.npy`` file, left at the start of the data.

    Raises
    ------
    ValueError
        The header is damaged; the message names ``path``.
    """
    try:
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(f)
    except (ValueError, OSError, SyntaxError, TypeError) as err:
        raise ValueError(f"{path} has a damaged .npy header ({err})") from None
    if fortran or dtype.hasobject:
        raise ValueError(f"{path} is not a C-ordered numeric .npy file")
    return shape, dtype


def load_npy(path: Path, expected_sha256: str | None) -> np.ndarray:
    """A whole ``.npy`` file, its bytes checked against ``expected_sha256`` first."""
    data = path.read_bytes()
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise ValueError(f"{path} does not match its recorded SHA-256: the file is damaged")
    with io.BytesIO(data) as f:
        npy_header(f, path)
        f.seek(0)
        return np.load(f)


class Partial:
    """``result.partial.npy``: the final ``.npy`` file, preallocated, filled in place.

    The first process to finish a chunk creates it (header for the whole result, then the file
    extended to its full size) in the private folder and hard-links it into place, so it never
    appears half-made and concurrent ranks on one machine agree on one file; each chunk's rows are
    then written at their offset with ``pwrite`` (disjoint byte ranges), and only afterwards is
    the chunk's record (index, SHA-256 of its rows, skipped items) appended to
    ``result.partial.done`` (:meth:`mark_done`).
    """

    def __init__(self, out: Path, fd: int, offset: int, row_bytes: int) -> None:
        self.out, self.path, self.fd = out, out / PARTIAL, fd
        self.offset, self.row_bytes = offset, row_bytes
        self.log_fd: int | None = None

    @classmethod
    def create(
        cls, out: Path, n: int, item_shape: tuple[int, ...], dtype: np.dtype, exclusive: bool
    ) -> Partial | None:
        """Open (creating it if needed) for ``n`` items; None when links are not supported and
        another process could race (``exclusive`` False): the caller then writes chunk files."""
        path = out / PARTIAL
        if path.is_file():
            return cls.open(out, n, item_shape, dtype)
        row_bytes = math.prod(item_shape) * dtype.itemsize
        tmp = out / TMP / f"{PARTIAL}.{os.getpid()}"
        header = {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": (n, *item_shape),
        }
        try:
            with open(tmp, "w+b") as f:
                try:
                    np.lib.format.write_array_header_1_0(f, header)
                except ValueError:  # a header over 64 KiB
                    np.lib.format.write_array_header_2_0(f, header)
                offset = f.tell()
                f.truncate(offset + n * row_bytes)
                try:
                    os.link(tmp, path)  # atomic, fails if another rank was first
                except FileExistsError:
                    return cls.open(out, n, item_shape, dtype)
                except OSError:  # no hard links on this file system
                    if not exclusive:
                        return None
                    os.replace(tmp, path)
                return cls(out, os.dup(f.fileno()), offset, row_bytes)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def open(cls, out: Path, n: int, item_shape: tuple[int, ...], dtype: np.dtype) -> Partial:
        path = out / PARTIAL
        fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
        try:
            with open(fd, "rb", closefd=False) as f:
                shape, existing = npy_header(f, path)
                offset = f.tell()
            if shape != (n, *item_shape) or existing != dtype:
                raise ValueError(
                    f"attribute() returned items of shape {item_shape} {dtype}, earlier chunks "
                    f"{shape[1:]} {existing} (in {path}); attribute() must return the same "
                    "shape for every item"
                )
        except BaseException:
            os.close(fd)
            raise
        return cls(out, fd, offset, math.prod(item_shape) * dtype.itemsize)

    def write(self, start: int, rows: np.ndarray) -> str:
        """Write ``rows`` (item ``start`` onwards) at their place; returns their SHA-256."""
        view = memoryview(np.ascontiguousarray(rows).reshape(-1)).cast("B")
        digest = sha256_bytes(view)
        position = self.offset + start * self.row_bytes
        while view:
            if hasattr(os, "pwrite"):
                written = os.pwrite(self.fd, view, position)
            else:  # pragma: no cover - Windows
                os.lseek(self.fd, position, os.SEEK_SET)
                written = os.write(self.fd, view)
            view, position = view[written:], position + written
        return digest

    def mark_done(self, record: dict[str, Any]) -> None:
        """Append a chunk's record as one JSON line (one ``O_APPEND`` write), after its rows."""
        if self.log_fd is None:
            self.log_fd = os.open(
                self.out / DONE_LOG, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644
            )
        os.write(self.log_fd, (json.dumps(record, allow_nan=False) + "\n").encode("utf-8"))

    def close(self) -> None:
        os.close(self.fd)
        if self.log_fd is not None:
            os.close(self.log_fd)
