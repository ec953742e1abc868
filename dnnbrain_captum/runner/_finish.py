"""The end of a run (rank 0, every chunk done): ``result.npy`` completed and checksummed (or the
chunk files kept), the final manifest written, the run's temporary files removed."""

from __future__ import annotations

import importlib.metadata
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnnbrain_captum.runner._manifest import now, read_manifest
from dnnbrain_captum.runner._storage import (
    CHUNKS,
    DONE_LOG,
    MANIFEST,
    PARTIAL,
    RESULT,
    TMP,
    Partial,
    chunk_name,
    dump_json,
    load_npy,
    npy_header,
    remove_chunk_files,
    save_npy,
    sha256_file,
)
from dnnbrain_captum.runner._work import Plan, fill_value


def finish(
    plan: Plan, done: dict[int, dict[str, Any]], world: int, ranks: dict[int, int]
) -> list[dict[str, Any]]:
    """Complete the run; returns the skipped items. ``done`` holds every chunk's record."""
    missing = [k for k in range(plan.n_chunks) if k not in done]
    if missing:
        raise RuntimeError(f"chunks {missing[:10]} of {plan.out} are missing after the run")
    skipped = [s for k in range(plan.n_chunks) for s in done[k]["skipped"]]
    with_data = [done[k] for k in range(plan.n_chunks) if done[k]["file"] is not None]
    if not with_data:
        raise ValueError(
            f"no item of the data set could be loaded; first errors: "
            f"{[s['id'] + ': ' + s['error'] for s in skipped[:3]]}"
        )
    first = plan.out / (
        PARTIAL if with_data[0]["file"] == PARTIAL else f"{CHUNKS}/{with_data[0]['file']}"
    )
    with open(first, "rb") as f:
        shape, dtype = npy_header(f, first)
    item_shape = tuple(shape[1:])
    if plan.assemble:
        result_sha = _assemble(plan, done, item_shape, dtype)
    else:
        result_sha = None
        _keep_chunks(plan, done, item_shape, dtype)
    _final_manifest(plan, done, item_shape, dtype, skipped, world, ranks, result_sha)
    _clean_up(plan)
    return skipped


def _check_shape(
    k: int, chunk: np.ndarray, rows: int, item_shape: tuple[int, ...], dtype: np.dtype
) -> None:
    if chunk.shape != (rows, *item_shape) or chunk.dtype != dtype:
        raise ValueError(
            f"chunk {k} has items of shape {chunk.shape[1:]} {chunk.dtype}, other chunks have "
            f"{item_shape} {dtype}; attribute() must return the same shape for every item"
        )


def _assemble(
    plan: Plan, done: dict[int, dict[str, Any]], item_shape: tuple[int, ...], dtype: np.dtype
) -> str:
    """Copy chunk files (verified) and fill rows into ``result.partial.npy``, checksum it and
    rename it to ``result.npy``; returns its SHA-256."""
    copy = [k for k in range(plan.n_chunks) if done[k]["file"] != PARTIAL]
    if copy:
        partial = Partial.create(plan.out, plan.n, item_shape, dtype, exclusive=True)
        assert partial is not None  # exclusive=True always opens it
        try:
            for k in copy:
                start, stop = plan.rows(k)
                name = done[k]["file"]
                if name is None:
                    chunk = np.full((stop - start, *item_shape), fill_value(dtype), dtype=dtype)
                else:
                    chunk = load_npy(plan.out / CHUNKS / name, done[k]["sha256"])
                _check_shape(k, chunk, stop - start, item_shape, dtype)
                partial.write(start, chunk)
        finally:
            partial.close()
    digest = sha256_file(plan.out / PARTIAL)
    os.replace(plan.out / PARTIAL, plan.out / RESULT)
    return digest


def _keep_chunks(
    plan: Plan, done: dict[int, dict[str, Any]], item_shape: tuple[int, ...], dtype: np.dtype
) -> None:
    """``assemble=False``: every chunk becomes a chunk file (with its sidecar and SHA-256)."""
    out = plan.out
    in_place = np.load(out / PARTIAL, mmap_mode="r") if (out / PARTIAL).is_file() else None
    (out / CHUNKS).mkdir(exist_ok=True)
    for k in range(plan.n_chunks):
        record = done[k]
        if record["file"] is not None and record["file"] != PARTIAL:
            continue
        start, stop = plan.rows(k)
        if record["file"] is None:  # an all-skipped chunk still gets its rows
            rows = np.full((stop - start, *item_shape), fill_value(dtype), dtype=dtype)
        else:  # written in place
            rows = np.asarray(in_place[start:stop])  # type: ignore[index]
        name = chunk_name(k) + ".npy"
        record.update(file=name, sha256=save_npy(out, out / CHUNKS / name, rows))
        dump_json(out, out / CHUNKS / f"{chunk_name(k)}.json", record)
    del in_place
    (out / PARTIAL).unlink(missing_ok=True)
    (out / DONE_LOG).unlink(missing_ok=True)


def _version(name: str) -> str | None:
    """A package's version without importing it (importing Captum costs seconds)."""
    module = sys.modules.get(name)
    if module is not None and hasattr(module, "__version__"):
        return str(module.__version__)
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _final_manifest(
    plan: Plan,
    done: dict[int, dict[str, Any]],
    item_shape: tuple[int, ...],
    dtype: np.dtype,
    skipped: list[dict[str, Any]],
    world: int,
    ranks: dict[int, int],
    result_sha: str | None,
) -> None:
    import dnnbrain_captum

    fill = fill_value(dtype)
    manifest = read_manifest(plan.out)
    chunks = []
    for k in range(plan.n_chunks):
        start, stop = plan.rows(k)
        entry = {"chunk": k, "start": start, "stop": stop, "rank": ranks.get(k), "file": None}
        if not plan.assemble:
            entry.update(file=f"{CHUNKS}/{done[k]['file']}", sha256=done[k]["sha256"])
        chunks.append(entry)
    manifest.update(
        {
            "status": "complete",
            "finished": now(),
            "result": RESULT if plan.assemble else None,
            "result_sha256": result_sha,
            "shape": [plan.n, *item_shape],
            "item_shape": list(item_shape),
            "dtype": str(dtype),
            "fill_value": "NaN" if isinstance(fill, float) and math.isnan(fill) else fill,
            "on_error": plan.on_error,
            "skipped": skipped,
            "world_size": world,
            "chunks": chunks,
            "software": {
                "dnnbrain_captum": dnnbrain_captum.__version__,
                "torch": torch.__version__,
                "captum": _version("captum"),
                "numpy": np.__version__,
            },
        }
    )
    dump_json(plan.out, plan.out / MANIFEST, manifest)


def _clean_up(plan: Plan) -> None:
    """Remove what only served the run in progress: the done log, and (assembled) the chunk
    files by their exact names; ``chunks/`` only if that leaves it empty."""
    out = plan.out
    (out / DONE_LOG).unlink(missing_ok=True)
    if plan.assemble and (out / CHUNKS).is_dir():
        remove_chunk_files(out, plan.n_chunks)


def remove_private(out: Path) -> None:
    """The run's private folder of files being written (after every rank stopped)."""
    shutil.rmtree(out / TMP, ignore_errors=True)
