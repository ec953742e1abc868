"""Reading a completed run back: :func:`read_results`, checksums verified."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from dnnbrain_captum.runner._manifest import read_manifest
from dnnbrain_captum.runner._resume import done_chunks
from dnnbrain_captum.runner._storage import MANIFEST, load_npy, npy_header, sha256_file


def read_results(out: str | os.PathLike[str], mmap: bool = True, verify: bool = True) -> np.ndarray:
    """The results of a completed :func:`run_over` as one array in data-set order.

    Parameters
    ----------
    out : path
        The run's output folder.
    mmap : bool
        Memory-map ``result.npy`` read-only (default) instead of reading it into memory.
        A run kept as chunks (``assemble=False``) is concatenated in memory.
    verify : bool
        Check the result file (or each chunk file) against the SHA-256 recorded in the manifest
        first (default). This reads the whole result once; ``False`` skips it for very large
        results.

    Returns
    -------
    numpy.ndarray of shape (n_items, *item_shape)
        Row ``i`` is item ``i``; rows of skipped items hold the manifest's ``fill_value``.

    Raises
    ------
    FileNotFoundError
        No manifest in ``out``.
    ValueError
        The run is not complete (rerun :func:`run_over` with the same arguments to finish it);
        the manifest is malformed; a result file does not match its checksum or has a damaged
        header (each message names the file).

    Examples
    --------
    See :func:`run_over`.
    """
    out = Path(out)
    manifest = read_manifest(out)
    if manifest["status"] != "complete":
        request = manifest["request"]
        n_chunks = math.ceil(request["n_items"] / request["chunk_size"])
        done = len(done_chunks(out, n_chunks, request["chunk_size"], request["n_items"]))
        raise ValueError(
            f"the run in {out} is not complete ({done} of {n_chunks} chunks done); rerun "
            "run_over with the same arguments to finish it"
        )
    checksums = verify and manifest["format_version"] >= 2
    if manifest["result"]:
        path = out / manifest["result"]
        if checksums and sha256_file(path) != manifest["result_sha256"]:
            raise ValueError(
                f"{path} does not match the SHA-256 recorded in {out / MANIFEST}: the file is "
                "damaged; rerun run_over with the same arguments to recompute it"
            )
        with open(path, "rb") as f:
            shape, dtype = npy_header(f, path)
        if list(shape) != manifest["shape"] or str(dtype) != manifest["dtype"]:
            raise ValueError(
                f"{path} holds {shape} {dtype}, the manifest says "
                f"{tuple(manifest['shape'])} {manifest['dtype']}"
            )
        return np.load(path, mmap_mode="r" if mmap else None)
    parts = [
        load_npy(out / c["file"], c.get("sha256") if checksums else None)
        for c in manifest["chunks"]
    ]
    return np.concatenate(parts, axis=0)
