"""Run any attribution over a data set: batched, streamed to disk, resumable, torchrun-sharded.

:func:`run_over` calls an attribution's ``attribute`` on a data set batch by batch and writes
each batch's result to disk as soon as it is computed; :func:`read_results` gives the whole
result back as one (memory-mapped) numpy array in data-set order, its checksum verified.

The package's parts: ``_run`` (the outline of a run), ``_work`` (a rank's loop), ``_storage``
(files, atomic writes, checksums), ``_resume`` (which chunks are really done), ``_finish``
(completing the result), ``_manifest`` (schema, ownership, the folder check), ``_lock`` (the
folder lock), ``_dist`` (ranks), ``_request`` (what identifies a run), ``_data`` (batches),
``_results`` (reading). The guarantees are stated in ``docs/runner.md``.

Output folder layout (an open format: plain ``numpy`` and ``json`` read it)
--------------------------------------------------------------------------
``manifest.json``
    UTF-8 JSON (``NaN`` is written as the string ``"NaN"``). Keys:

    * ``format`` (``"dnnbrain_captum.run"``), ``format_version`` (2), ``status``
      (``"running"`` or ``"complete"``), ``created`` / ``finished`` (ISO 8601 UTC);
    * ``files``: the names the run owns (``manifest.json``, ``result.npy``,
      ``result.partial.npy``, ``result.partial.done``, ``chunks/`` — the chunk files
      ``chunk-KKKKKK.npy``/``.json`` in it — and its private ``.dnnbrain-run.tmp/``); only these
      are ever removed (``overwrite=True``, or on completion);
    * ``request``: what identifies the run, compared on every rerun —
      ``attribution`` (``class``, ``inner_class`` for wrappers such as NoiseTunnel, ``layer``
      dotted path or null, ``model`` class, ``model_sha256`` of its parameters and buffers),
      ``parameters`` (the ``attribute`` keyword arguments; tensors as
      ``{"tensor_sha256", "shape", "dtype"}``), ``n_items``, ``chunk_size``, ``seed``,
      ``stimulus_ids`` (one string per item) and ``targets`` (``{"kind": "none" | "single" |
      "per_item", "value": ...}``);
    * on completion: ``result`` (``"result.npy"``, or null when the chunks were kept),
      ``result_sha256`` (SHA-256 of the whole ``result.npy``), ``shape``, ``dtype``,
      ``item_shape``, ``fill_value`` (rows of skipped items), ``skipped``
      (``[{"index", "id", "error"}]``), ``on_error``, ``world_size``, ``chunks``
      (``[{"chunk", "start", "stop", "rank", "file"}]``, item ranges ``[start, stop)``;
      ``rank`` computed it, null when an earlier call did; kept chunk files also have
      ``sha256``), ``software`` versions.

``result.npy``
    The whole result, shape ``(n_items, *item_shape)``, row ``i`` = item ``i``; present once
    the run is complete (``np.load(path, mmap_mode="r")``; ``sha256sum`` checks it).

``result.partial.npy`` and ``result.partial.done``
    While a run is in progress: ``result.npy`` being filled. It is created, with its header and
    at its full size, when the first chunk is done, and each chunk's rows are written at their
    place in it; after that one JSON line ``{"chunk", "sha256", "skipped"}`` (SHA-256 of the
    chunk's row bytes) is appended to ``result.partial.done``. On a rerun a chunk counts as
    done only when a line names it and its rows still match the checksum; on completion the
    file is checksummed and renamed to ``result.npy``: the result is written once.

``chunks/chunk-KKKKKK.npy`` and ``chunks/chunk-KKKKKK.json``
    Chunk ``K`` holds items ``[K·chunk_size, min((K+1)·chunk_size, n_items))``. Written instead
    of the rows in place when ranks run on several machines (a shared network file system;
    rank 0 copies them into ``result.npy`` at the end), with ``assemble=False`` (then they are
    the result), and for a chunk none of whose items loaded (``"file": null``). The ``.npy`` is
    written, then the sidecar ``{"chunk", "file", "sha256", "skipped"}`` (SHA-256 of the
    ``.npy`` file): the sidecar marks the chunk done, its checksum is verified before reuse.

``.dnnbrain-run.tmp/`` and ``.dnnbrain-run.lock``
    While a run is in progress: files being written (renamed into place within the folder) and
    the folder lock (see :mod:`dnnbrain_captum.runner._lock`); both are removed at its end.

Distributed runs
----------------
Under ``torchrun`` (environment variables ``RANK`` and ``WORLD_SIZE``), or when a process group
is already initialised, chunk ``K`` goes to rank ``K mod world_size``: every item exactly once,
the same chunk boundaries as a single-process run (so a killed 2-process run can be resumed by 1
process and vice versa). Ranks coordinate over a CPU (gloo) group; rank 0 takes the folder lock
for the whole job and checks the folder first, and completes ``result.npy`` and writes the final
manifest after all ranks are done. Ranks on one machine write their rows into the one
``result.partial.npy`` (disjoint byte ranges); for several machines (ranks report their host
names), ``out`` must be on a shared file system, and ranks write chunk files instead. Place the
model on each rank's device yourself (e.g. from ``LOCAL_RANK``); inputs follow the model's
device.
"""

from __future__ import annotations

from dnnbrain_captum.runner._lock import FolderBusyError
from dnnbrain_captum.runner._manifest import FORMAT, FORMAT_VERSION, read_manifest
from dnnbrain_captum.runner._results import read_results
from dnnbrain_captum.runner._run import RunSummary, run_over
from dnnbrain_captum.runner._storage import CHUNKS, DONE_LOG, MANIFEST, PARTIAL, RESULT
from dnnbrain_captum.runner._work import ItemLoadError

__all__ = [
    "CHUNKS",
    "DONE_LOG",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "PARTIAL",
    "RESULT",
    "FolderBusyError",
    "ItemLoadError",
    "RunSummary",
    "read_manifest",
    "read_results",
    "run_over",
]
