"""Verified resume: which chunks of an interrupted run are really done.

A chunk counts as done only when its record exists *and* its bytes match the SHA-256 recorded
when they were written: a line of ``result.partial.done`` (rows in ``result.partial.npy``), or a
sidecar ``chunks/chunk-K.json`` (a chunk file, or a chunk none of whose items loaded). Anything
else (a truncated or damaged file, a record for rows never written, a half-written line) is
recomputed.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from dnnbrain_captum.runner._storage import (
    CHUNKS,
    DONE_LOG,
    PARTIAL,
    chunk_name,
    npy_header,
    sha256_file,
)

logger = logging.getLogger("dnnbrain_captum.runner")


def repair_partial(out: Path, n: int) -> None:
    """Before a resume (rank 0, folder locked): drop a ``result.partial.npy`` whose header is
    damaged or not for ``n`` items (with its done log), and give a truncated one back its full
    size (its lost rows then fail their checksums and are recomputed)."""
    path = out / PARTIAL
    if not path.is_file():
        (out / DONE_LOG).unlink(missing_ok=True)  # a log without its data lists nothing
        return
    try:
        with open(path, "rb") as f:
            shape, dtype = npy_header(f, path)
            offset = f.tell()
        if not shape or shape[0] != n:
            raise ValueError(f"{path} holds {shape[0] if shape else 0} rows, not {n}")
    except ValueError as err:
        logger.warning("%s; recomputing the chunks written into it", err)
        path.unlink()
        (out / DONE_LOG).unlink(missing_ok=True)
        return
    size = offset + int(dtype.itemsize) * int(math.prod(shape))
    if path.stat().st_size != size:
        os.truncate(path, size)


def _log_records(out: Path) -> dict[int, list[dict[str, Any]]]:
    records: dict[int, list[dict[str, Any]]] = {}
    if not ((out / PARTIAL).is_file() and (out / DONE_LOG).is_file()):
        return records
    for line in (out / DONE_LOG).read_bytes().split(b"\n"):
        try:
            record = json.loads(line)
            records.setdefault(int(record["chunk"]), []).append(record)
        except (ValueError, KeyError, TypeError):
            continue  # a half-written or damaged line counts nothing
    return records


def _sidecars(out: Path, n_chunks: int) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    folder = out / CHUNKS
    if not folder.is_dir():
        return found
    for k in range(n_chunks):
        path = folder / f"{chunk_name(k)}.json"
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if int(record["chunk"]) == k and isinstance(record.get("skipped", []), list):
                found[k] = record
        except (ValueError, KeyError, TypeError, OSError):
            continue
    return found


def _rows_match(out: Path, k: int, chunk_size: int, n: int, sha: Any) -> bool:
    path = out / PARTIAL
    with open(path, "rb") as f:
        shape, dtype = npy_header(f, path)
        offset = f.tell()
    row_bytes = int(dtype.itemsize) * math.prod(shape[1:])
    start, stop = k * chunk_size, min((k + 1) * chunk_size, n)
    return sha == sha256_file(path, offset + start * row_bytes, (stop - start) * row_bytes)


def done_chunks(out: Path, n_chunks: int, chunk_size: int, n: int) -> dict[int, dict[str, Any]]:
    """Verified done chunks: ``{k: {"chunk", "file", "sha256", "skipped"}}``, ``"file"`` being
    ``PARTIAL`` (rows in place), a chunk file name, or None (no item of the chunk loaded)."""
    done: dict[int, dict[str, Any]] = {}
    for k, record in _sidecars(out, n_chunks).items():
        name, sha = record.get("file"), record.get("sha256")
        if name is None:
            done[k] = {
                "chunk": k,
                "file": None,
                "sha256": None,
                "skipped": record.get("skipped", []),
            }
        elif name == f"{chunk_name(k)}.npy" and (out / CHUNKS / name).is_file():
            if sha256_file(out / CHUNKS / name) == sha:
                done[k] = {
                    "chunk": k,
                    "file": name,
                    "sha256": sha,
                    "skipped": record.get("skipped", []),
                }
            else:
                logger.warning(
                    "%s does not match its checksum; recomputing chunk %d", out / CHUNKS / name, k
                )
    for k, lines in _log_records(out).items():
        if k in done or not 0 <= k < n_chunks:
            continue
        for record in reversed(lines):
            if _rows_match(out, k, chunk_size, n, record.get("sha256")):
                done[k] = {
                    "chunk": k,
                    "file": PARTIAL,
                    "sha256": record["sha256"],
                    "skipped": record.get("skipped", []),
                }
                break
        else:
            logger.warning(
                "the rows of chunk %d in %s do not match their checksum; recomputing them",
                k,
                out / PARTIAL,
            )
    return done
