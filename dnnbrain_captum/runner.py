"""Run any attribution over a data set: batched, streamed to disk, resumable, torchrun-sharded.

:func:`run_over` calls an attribution's ``attribute`` on a data set batch by batch and writes
each batch's result to disk as soon as it is computed; :func:`read_results` gives the whole
result back as one (memory-mapped) numpy array in data-set order.

Output folder layout (an open format: plain ``numpy`` and ``json`` read it)
--------------------------------------------------------------------------
``manifest.json``
    UTF-8 JSON (``NaN`` is written as the string ``"NaN"``). Keys:

    * ``format`` (``"dnnbrain_captum.run"``), ``format_version`` (1), ``status``
      (``"running"`` or ``"complete"``), ``created`` / ``finished`` (ISO 8601 UTC);
    * ``request``: what identifies the run, compared on every rerun —
      ``attribution`` (``class``, ``inner_class`` for wrappers such as NoiseTunnel, ``layer``
      dotted path or null, ``model`` class, ``model_sha256`` of its parameters and buffers),
      ``parameters`` (the ``attribute`` keyword arguments; tensors as
      ``{"tensor_sha256", "shape", "dtype"}``), ``n_items``, ``chunk_size``, ``seed``,
      ``stimulus_ids``
      (one string per item) and ``targets`` (``{"kind": "none" | "single" | "per_item",
      "value": ...}``);
    * on completion: ``result`` (``"result.npy"``, or null when the chunks were kept),
      ``shape``, ``dtype``, ``item_shape``, ``fill_value`` (rows of skipped items),
      ``skipped`` (``[{"index", "id", "error"}]``), ``on_error``, ``world_size``,
      ``chunks`` (``[{"chunk", "start", "stop", "rank", "file"}]``, item ranges
      ``[start, stop)``; ``rank`` computed it, null when an earlier, interrupted call did;
      ``file`` is null once assembled), ``software`` versions.

``result.npy``
    The whole result, shape ``(n_items, *item_shape)``, row ``i`` = item ``i``; present once
    the run is complete (``np.load(path, mmap_mode="r")``).

``result.partial.npy`` and ``result.partial.done``
    While a run is in progress: ``result.npy`` being filled. It is created, with its header and
    at its full size, when the first chunk is done, and each chunk's rows are written at their
    place in it; after that the chunk's index is appended as one line to
    ``result.partial.done`` (ASCII). A chunk is done when its index is in the log; a killed
    run loses at most the chunk in flight (its rows may be half-written, but it is not in the
    log). On completion the file is renamed to ``result.npy``: the result is written once.

``chunks/chunk-KKKKKK.npy`` (and ``chunks/chunk-KKKKKK.json``)
    Chunk ``K`` holds items ``[K·chunk_size, min((K+1)·chunk_size, n_items))``. Written instead
    of the rows in place when ranks run on several machines (a shared network file system;
    rank 0 copies them into ``result.npy`` at the end) and with ``assemble=False`` (then they
    are the result). Each is written to a temporary name and renamed, so its presence marks the
    chunk done and a killed run never leaves a half-written chunk. A chunk with unreadable
    items also gets a JSON sidecar (written before its rows) listing them; ``"file": null``
    there means none of its items loaded.

Distributed runs
----------------
Under ``torchrun`` (environment variables ``RANK`` and ``WORLD_SIZE``), or when a process group
is already initialised, chunk ``K`` goes to rank ``K mod world_size``: every item exactly once,
the same chunk boundaries as a single-process run (so a killed 2-process run can be resumed by 1
process and vice versa). Ranks coordinate over a CPU (gloo) group; rank 0 checks the folder
first, and completes ``result.npy`` and writes the final manifest after all ranks are done.
Ranks on one machine write their rows into the one ``result.partial.npy`` (disjoint byte
ranges); for several machines (ranks report their host names), ``out`` must be on a shared file
system, and ranks write chunk files instead. Place the model on each rank's device
yourself (e.g. from ``LOCAL_RANK``); inputs follow the model's device.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

__all__ = ["RunSummary", "read_manifest", "read_results", "run_over"]

logger = logging.getLogger(__name__)

FORMAT = "dnnbrain_captum.run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RESULT = "result.npy"
CHUNKS = "chunks"
PARTIAL = "result.partial.npy"  # result.npy while it is being filled in place
DONE_LOG = "result.partial.done"  # chunks whose rows are in PARTIAL, one index a line
_ON_ERROR = ("raise", "skip")


class ItemLoadError(ValueError):
    """An item of the data set could not be loaded; the message names it (index and id)."""


@dataclass
class RunSummary:
    """What one call of :func:`run_over` did, seen from one process.

    Attributes
    ----------
    out : Path
        The output folder.
    n_items : int
        Items in the data set.
    computed : int
        Items this process computed in this call (skipped ones included).
    reused : int
        Items of chunks found already done (resumed run), over all ranks.
    skipped : list of dict
        ``{"index", "id", "error"}`` for every unreadable item of the whole run.
    seconds : float
        Wall time of this process's work loop.
    items_per_second : float
        ``computed / seconds`` (0 when nothing was computed).
    rank, world_size : int
        This process's rank and the number of processes.
    """

    out: Path
    n_items: int
    computed: int
    reused: int
    skipped: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    items_per_second: float = 0.0
    rank: int = 0
    world_size: int = 1

    def __str__(self) -> str:
        text = (
            f"{self.computed} items in {self.seconds:.2f} s ({self.items_per_second:.1f} items/s)"
            f", {self.reused} reused, {len(self.skipped)} skipped, of {self.n_items}"
        )
        if self.world_size > 1:
            text = f"rank {self.rank}/{self.world_size}: " + text
        return text


# ----------------------------------------------------------------------------- description


def _sha256_tensor(value: Tensor | np.ndarray) -> str:
    array = value.detach().cpu() if isinstance(value, Tensor) else torch.as_tensor(value)
    if array.dtype == torch.bfloat16:
        array = array.float()
    return hashlib.sha256(np.ascontiguousarray(array.numpy()).reshape(-1)).hexdigest()


def _model_of(attribution: Any) -> Any:
    inner = getattr(attribution, "attribution_method", None)
    for obj in (attribution, inner):
        model = getattr(obj, "forward_func", None)
        if model is not None:
            return model
    return None


def _model_sha256(model: Any) -> str | None:
    if not isinstance(model, nn.Module):
        return None
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(_sha256_tensor(value).encode())
    return digest.hexdigest()


def _qualname(obj: Any) -> str:
    kind = obj if isinstance(obj, type) else type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _layer_name(model: Any, layer: Any) -> str | None:
    if layer is None:
        return None
    if isinstance(model, nn.Module) and isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name
    return repr(layer) if not isinstance(layer, nn.Module) else type(layer).__name__


def _describe(attribution: Any) -> dict[str, Any]:
    inner = getattr(attribution, "attribution_method", None)
    model = _model_of(attribution)
    layer = getattr(attribution, "layer", None)
    if layer is None and inner is not None:
        layer = getattr(inner, "layer", None)
    return {
        "class": _qualname(attribution),
        "inner_class": _qualname(inner) if inner is not None else None,
        "layer": _layer_name(model, layer),
        "model": _qualname(model) if model is not None else None,
        "model_sha256": _model_sha256(model),
    }


def _jsonable(value: Any, model: Any) -> Any:
    """A JSON form of an ``attribute`` argument that changes when the argument changes."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (Tensor, np.ndarray)):
        if value.ndim == 0:
            return {"scalar": _jsonable(value.item(), model), "dtype": str(value.dtype)}
        return {
            "tensor_sha256": _sha256_tensor(value),
            "shape": list(value.shape),
            "dtype": str(value.dtype),
        }
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, model) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, model) for k, v in sorted(value.items(), key=str)}
    if isinstance(value, nn.Module):
        return {"module": _layer_name(model, value)}
    if callable(value):
        return {"callable": getattr(value, "__module__", "?") + "." + getattr(
            value, "__qualname__", type(value).__qualname__)}
    return {"repr": repr(value)}


def _normalise_targets(targets: Any, n: int) -> tuple[str, Any, Any]:
    """(kind, value, json): kind "none", "single" (one for all) or "per_item" (a list)."""
    if targets is None:
        return "none", None, None
    if isinstance(targets, np.ndarray):
        targets = torch.as_tensor(targets)
    if isinstance(targets, Tensor):
        if targets.dim() == 0:
            value = targets.item()
            return "single", value, value
        if targets.dim() == 1 or (targets.dim() == 2 and targets.shape[0] == n):
            targets = [t if isinstance(t, int) else tuple(t) for t in targets.tolist()]
        else:
            raise ValueError(
                f"targets tensor must have one entry per item ({n}), got shape "
                f"{tuple(targets.shape)}"
            )
    if isinstance(targets, list):
        if len(targets) != n:
            raise ValueError(
                f"targets has {len(targets)} entries but the data set has {n} items; give one "
                "target per item, or one int / tuple / callable for all"
            )
        value = [tuple(t) if isinstance(t, (list, tuple)) else t for t in targets]
        for t in value:
            if isinstance(t, bool) or not isinstance(t, (int, tuple)):
                raise TypeError(
                    f"per-item targets must be ints or tuples of ints, got {t!r}"
                )
        return "per_item", value, [list(t) if isinstance(t, tuple) else t for t in value]
    if isinstance(targets, bool):
        raise TypeError(f"targets must be an int, tuple, callable or sequence, got {targets!r}")
    if isinstance(targets, int):
        return "single", targets, targets
    if isinstance(targets, tuple):
        return "single", targets, list(targets)
    if callable(targets):
        return "single", targets, _jsonable(targets, None)
    raise TypeError(
        f"targets must be None, an int, a tuple, a callable, or one per item (list, tensor, "
        f"array), got {type(targets).__name__}"
    )


# ----------------------------------------------------------------------------- data


@dataclass
class _Batch:
    chunk: int
    indices: list[int]  # every index of the chunk
    ok: list[int]  # positions (within the chunk) that loaded
    images: Tensor | None
    errors: list[tuple[int, str]]  # (index, message)


class _Indexed(Dataset):
    """Wraps a data set so that loading errors become values (not a crash of the loader)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        try:
            item = self.dataset[index]
        except Exception as err:  # noqa: BLE001 - reported by name, per item
            return index, None, f"{type(err).__name__}: {err}"
        return index, _image_of(item, index), None


def _image_of(item: Any, index: int) -> Tensor:
    image = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, Tensor):
        raise TypeError(
            f"item {index} of the data set is a {type(image).__name__}; expected a tensor or a "
            "tuple (tensor, ...) (use dnnbrain_captum.io.ImageFolderDataset for image files)"
        )
    return image


def _collate(items: list[tuple[int, Tensor | None, str | None]]) -> tuple[Any, ...]:
    indices = [i for i, _, _ in items]
    ok = [p for p, (_, image, _) in enumerate(items) if image is not None]
    errors = [(i, msg) for i, image, msg in items if image is None]
    images = None
    if ok:
        shapes = {tuple(items[p][1].shape) for p in ok}  # type: ignore[union-attr]
        if len(shapes) > 1:
            raise ValueError(
                f"items {indices[0]}..{indices[-1]} have different shapes {sorted(shapes)}; give "
                "the data set a transform that resizes them (dnnbrain_captum.io.preprocessing_for)"
            )
        images = torch.stack([items[p][1] for p in ok])  # type: ignore[misc]
    return indices, ok, images, errors


def _batches(
    data: Any, chunks: list[int], chunk_size: int, n: int, num_workers: int, pin_memory: bool
) -> Iterator[_Batch]:
    ranges = [list(range(k * chunk_size, min((k + 1) * chunk_size, n))) for k in chunks]
    tensor = None
    if isinstance(data, Tensor):
        tensor = data
    elif isinstance(data, TensorDataset):
        tensor = data.tensors[0]
    if tensor is not None:  # fast path: slicing, no per-item calls
        for k, idx in zip(chunks, ranges, strict=True):
            images = tensor[idx[0] : idx[-1] + 1]
            yield _Batch(k, idx, list(range(len(idx))), images, [])
        return
    loader = DataLoader(
        _Indexed(data), batch_sampler=ranges, collate_fn=_collate,
        num_workers=num_workers, pin_memory=pin_memory,
    )
    for k, (indices, ok, images, errors) in zip(chunks, loader, strict=True):
        yield _Batch(k, indices, ok, images, errors)


def _ids_of(data: Any, n: int, ids: Sequence[Any] | None) -> list[str]:
    if ids is None:
        ids = getattr(data, "ids", None)
    if ids is None:
        return [str(i) for i in range(n)]
    ids = [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"ids has {len(ids)} entries but the data set has {n} items")
    return ids


# ----------------------------------------------------------------------------- files


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write through ``write(binary_file)`` to a temporary name, then rename over ``path``."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def _dump_json(path: Path, obj: Any) -> None:
    """Strict JSON (no NaN), one line: the C encoder, fast for long id and target lists."""
    data = (json.dumps(obj, allow_nan=False) + "\n").encode("utf-8")
    _write_atomic(path, lambda f: f.write(data))


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a run folder as a dict (see the module docstring for its keys).

    Raises
    ------
    FileNotFoundError
        ``out`` holds no ``manifest.json``.
    """
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{out} holds no run manifest ({MANIFEST})")
    return json.loads(path.read_text(encoding="utf-8"))


def _chunk_name(k: int) -> str:
    return f"chunk-{k:06d}"


def _done_chunks(out: Path, n_chunks: int) -> dict[int, dict[str, Any]]:
    """Chunks already computed: ``{k: {"chunk", "file", "skipped"}}``.

    Chunk ``k`` is done when its index is a line of ``result.partial.done`` (appended once its
    rows were written into ``result.partial.npy``; ``"file"`` is ``PARTIAL``), when
    ``chunks/chunk-k.npy`` exists (renamed into place whole; ``"file"`` is its name), or when its
    sidecar ``chunks/chunk-k.json`` says that none of its items loaded (``"file"`` None). The
    sidecar is only written for chunks with skipped items, before the rows or the chunk file.
    """
    done: dict[int, dict[str, Any]] = {}
    sidecars: dict[int, dict[str, Any]] = {}
    npy = []
    folder = out / CHUNKS
    if folder.is_dir():
        for entry in os.scandir(folder):
            name = entry.name
            if not name.startswith("chunk-"):
                continue
            if name.endswith(".json"):
                try:
                    record = json.loads(Path(entry.path).read_text(encoding="utf-8"))
                    sidecars[int(record["chunk"])] = record
                except (ValueError, KeyError, TypeError):
                    continue
            elif name.endswith(".npy"):
                try:
                    npy.append((int(name[len("chunk-") : -len(".npy")]), name))
                except ValueError:
                    continue
    in_place = []
    if (out / PARTIAL).is_file() and (out / DONE_LOG).is_file():
        for line in (out / DONE_LOG).read_text(encoding="ascii", errors="replace").split("\n"):
            if line.strip().isdigit():
                in_place.append((int(line), PARTIAL))
    for k, name in npy + in_place:
        if 0 <= k < n_chunks:
            done[k] = {"chunk": k, "file": name, "skipped": sidecars.get(k, {}).get("skipped", [])}
    for k, record in sidecars.items():
        if 0 <= k < n_chunks and record.get("file") is None and k not in done:
            done[k] = {"chunk": k, "file": None, "skipped": record.get("skipped", [])}
    return done


def _npy_header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of an open ``.npy`` file, left at the start of the data."""
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read(f)
    return shape, dtype


class _Partial:
    """``result.partial.npy``: the final ``.npy`` file, preallocated, filled in place.

    The first process to finish a chunk creates it (header for the whole result, then the file
    extended to its full size) under a temporary name and hard-links it into place, so it never
    appears half-made and concurrent ranks on one machine agree on one file; each chunk's rows are
    then written at their offset with ``pwrite`` (disjoint byte ranges), and only afterwards is
    the chunk's index appended to ``result.partial.done`` (:meth:`mark_done`).
    """

    def __init__(self, out: Path, fd: int, offset: int, row_bytes: int) -> None:
        self.out, self.path, self.fd = out, out / PARTIAL, fd
        self.offset, self.row_bytes = offset, row_bytes
        self.log_fd: int | None = None

    @classmethod
    def open(cls, out: Path, n: int, item_shape: tuple[int, ...], dtype: np.dtype,
             exclusive: bool) -> _Partial | None:
        """Open (creating it if needed) for ``n`` items; None when links are not supported and
        another process could race (``exclusive`` False): the caller then writes chunk files."""
        path = out / PARTIAL
        row_bytes = math.prod(item_shape) * dtype.itemsize
        if not path.is_file():
            tmp = path.with_name(f"{PARTIAL}.tmp-{os.getpid()}")
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                      "shape": (n, *item_shape)}
            made = None
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
                        made = os.dup(f.fileno())
                    except FileExistsError:
                        pass
                    except OSError:  # no hard links on this file system
                        if not exclusive:
                            return None
                        os.replace(tmp, path)
                        made = os.dup(f.fileno())
            finally:
                tmp.unlink(missing_ok=True)
            if made is not None:
                return cls(out, made, offset, row_bytes)
        fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
        try:
            with open(fd, "rb", closefd=False) as f:
                shape, existing_dtype = _npy_header(f)
                offset = f.tell()
            if shape != (n, *item_shape) or existing_dtype != dtype:
                raise ValueError(
                    f"attribute() returned items of shape {item_shape} {dtype}, earlier chunks "
                    f"{shape[1:]} {existing_dtype}; attribute() must return the same shape for "
                    "every item"
                )
        except BaseException:
            os.close(fd)
            raise
        return cls(out, fd, offset, row_bytes)

    def write(self, start: int, rows: np.ndarray) -> None:
        """Write ``rows`` (item ``start`` onwards) at their place in the file."""
        view = memoryview(np.ascontiguousarray(rows).reshape(-1)).cast("B")
        position = self.offset + start * self.row_bytes
        while view:
            if hasattr(os, "pwrite"):
                written = os.pwrite(self.fd, view, position)
            else:  # pragma: no cover - Windows
                os.lseek(self.fd, position, os.SEEK_SET)
                written = os.write(self.fd, view)
            view, position = view[written:], position + written

    def mark_done(self, chunk: int) -> None:
        """Append ``chunk`` to the done log: one short ``O_APPEND`` write (atomic on one
        machine), after its rows were written."""
        if self.log_fd is None:
            self.log_fd = os.open(self.out / DONE_LOG, os.O_CREAT | os.O_WRONLY | os.O_APPEND,
                                  0o644)
        os.write(self.log_fd, f"{chunk}\n".encode("ascii"))

    def close(self) -> None:
        os.close(self.fd)
        if self.log_fd is not None:
            os.close(self.log_fd)


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    diffs = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and key in ("attribution", "parameters"):
            diffs += _differences(a, b, prefix + key + ".")
        else:
            diffs.append(prefix + key)
    return diffs


# ----------------------------------------------------------------------------- distributed


class _Dist:
    """Rank, world size and a CPU group for coordination (gloo), or a single process."""

    def __init__(self) -> None:
        self.rank, self.world, self.group, self.created = 0, 1, None, False
        if not torch.distributed.is_available():
            return
        dist = torch.distributed
        if not dist.is_initialized():
            world = int(os.environ.get("WORLD_SIZE", "1"))
            if "RANK" not in os.environ or world <= 1:
                return
            dist.init_process_group(backend="gloo")
            self.created = True
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.world > 1 and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        result: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(result, obj, group=self.group)
        return result

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def close(self) -> None:
        if self.created and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _agree(dist: _Dist, error: BaseException | None, payload: Any = None) -> list[Any]:
    """Collective: raise on every rank if any rank failed (its own error on that rank), else
    return every rank's ``payload``."""
    message = None if error is None else f"{type(error).__name__}: {error}"
    gathered = dist.gather((message, payload))
    if error is not None:
        raise error
    failed = [(r, m) for r, (m, _) in enumerate(gathered) if m is not None]
    if failed:
        rank, message = failed[0]
        raise RuntimeError(f"rank {rank} failed: {message}")
    return [p for _, p in gathered]


# ----------------------------------------------------------------------------- main


def run_over(
    attribution: Any,
    dataset_or_loader: Dataset | DataLoader | Tensor | Any,
    targets: Any = None,
    out: str | os.PathLike[str] = "attribution_run",
    batch_size: int | None = None,
    *,
    ids: Sequence[Any] | None = None,
    on_error: str = "raise",
    overwrite: bool = False,
    assemble: bool = True,
    num_workers: int | None = None,
    device: torch.device | str | None = None,
    seed: int | None = 0,
    show_progress: bool = False,
    **attribute_kwargs: Any,
) -> RunSummary:
    """Run ``attribution.attribute`` over a whole data set, streaming results to ``out``.

    Parameters
    ----------
    attribution : attribution object
        Any object with ``attribute(inputs, target=..., **kwargs)`` returning a batch-first
        tensor, e.g. :class:`~dnnbrain_captum.VanillaSaliencyImage`, an
        :class:`~dnnbrain_captum.OccluderDiscrepancyMapping` or a ``captum.attr.NoiseTunnel``.
    dataset_or_loader : Dataset, DataLoader or Tensor
        A map-style data set whose items are image tensors (C, H, W) or tuples
        ``(image, ...)`` (e.g. ``TensorDataset(images, labels)`` or
        :class:`dnnbrain_captum.io.ImageFolderDataset`), a tensor (N, C, H, W), or a
        ``DataLoader`` over such a data set (its data set, batch size, ``num_workers`` and
        ``pin_memory`` are used; items are always taken in data-set order).
    targets : int, tuple, callable, or one per item (list, 1-D tensor/array), optional
        Passed as ``target`` to ``attribute``: one target for all items, or one per item
        (sliced per batch).
    out : path
        The output folder (created if needed). See the module docstring for its layout.
    batch_size : int, optional
        Items per ``attribute`` call and per chunk file (default: the loader's batch size,
        else 32). A killed run loses at most the chunk in flight.
    ids : sequence, optional
        Stimulus identifiers, one per item (default: the data set's ``ids`` attribute, e.g. file
        names for :class:`~dnnbrain_captum.io.ImageFolderDataset`, else "0", "1", ...).
    on_error : {"raise", "skip"}
        An item that fails to load (unreadable image): stop with an error naming it
        (``"raise"``, completed chunks are kept) or skip it (``"skip"``): its row is filled with
        NaN (0 for integer results) and it is listed in the manifest's ``skipped``.
    overwrite : bool
        Replace a previous run with different parameters in ``out`` (only the run's own files
        are removed). Without it such a rerun is refused and ``out`` is left unchanged.
    assemble : bool
        Build one ``result.npy`` (default): rows are written straight into it as chunks finish
        (ranks on several machines write chunk files, copied in at the end). False writes one
        ``.npy`` file per chunk and keeps them (``read_results`` then concatenates them in
        memory).
    num_workers : int, optional
        DataLoader worker processes for loading (default: the loader's, else 0).
    device : torch.device or str, optional
        Where inputs go (default: the device of the model's first parameter).
    seed : int or None
        Chunk ``K`` is computed with the random generators seeded to ``seed + K`` (inside
        ``torch.random.fork_rng``, so the caller's generator state is untouched): stochastic
        methods (NoiseTunnel's noise, random baselines) give the same result whatever the number
        of processes and after a resume. None leaves the generators alone.
    show_progress : bool
        A tqdm progress bar per rank.
    **attribute_kwargs
        Further ``attribute`` arguments (e.g. ``sliding_window_shapes=(8, 8)``), recorded in the
        manifest.

    Returns
    -------
    RunSummary
        Items computed, reused and skipped, seconds and items/s (also logged at INFO level).

    Raises
    ------
    ValueError
        ``out`` holds a run with different parameters (the differing keys are named), or holds
        chunk files without a manifest; bad ``targets``/``ids``/``on_error``; an item that does
        not load with ``on_error="raise"`` (:class:`ItemLoadError`, naming its index and id).

    Examples
    --------
    >>> import tempfile
    >>> from dnnbrain_captum import VanillaSaliencyImage, digits_cnn, digits_images, read_results
    >>> images, labels = digits_images(n=10)
    >>> saliency = VanillaSaliencyImage(digits_cnn(), "conv5")
    >>> folder = tempfile.mkdtemp()
    >>> summary = run_over(saliency, images, targets=labels, out=folder, batch_size=4)
    >>> summary.computed, summary.n_items
    (10, 10)
    >>> maps = read_results(folder)
    >>> maps.shape
    (10, 3, 32, 32)
    >>> bool(np.allclose(maps[3], saliency.attribute(images[3:4], target=int(labels[3]))[0]))
    True
    >>> run_over(saliency, images, targets=labels, out=folder, batch_size=4).reused
    10
    """
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not callable(getattr(attribution, "attribute", None)):
        raise TypeError(
            f"attribution must have an attribute() method, got {type(attribution).__name__}"
        )
    data: Any = dataset_or_loader
    pin_memory = False
    if isinstance(data, DataLoader):
        if batch_size is None:
            batch_size = data.batch_size
        if num_workers is None:
            num_workers = data.num_workers
        pin_memory = data.pin_memory
        data = data.dataset
    batch_size = 32 if batch_size is None else batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    num_workers = num_workers or 0
    try:
        n = len(data)
    except TypeError:
        raise TypeError(
            f"dataset_or_loader must be a map-style data set with len(), got "
            f"{type(data).__name__}"
        ) from None
    if n == 0:
        raise ValueError("the data set is empty")
    out = Path(out)
    stimulus_ids = _ids_of(data, n, ids)
    kind, target_value, target_json = _normalise_targets(targets, n)
    model = _model_of(attribution)
    request = {
        "attribution": _describe(attribution),
        "parameters": {k: _jsonable(v, model) for k, v in sorted(attribute_kwargs.items())},
        "n_items": n,
        "chunk_size": batch_size,
        "seed": seed,
        "stimulus_ids": stimulus_ids,
        "targets": {"kind": kind, "value": target_json},
    }
    request_text = json.dumps(request, allow_nan=False)
    request = json.loads(request_text)  # canonical JSON form (lists, string keys)
    n_chunks = math.ceil(n / batch_size)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    if device is None and isinstance(model, nn.Module):
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else None
    if device is not None:
        device = torch.device(device)

    dist = _Dist()
    try:
        # 1. rank 0 checks the folder and announces the verdict
        verdict: dict[str, Any] = {"error": None, "complete": False}
        if dist.rank == 0:
            try:
                verdict["complete"] = _prepare(out, request, overwrite, assemble)
            except Exception as err:  # noqa: BLE001 - every rank raises it below
                verdict["error"] = err
        verdict = dist.broadcast(verdict)
        if verdict["error"] is not None:
            raise verdict["error"]
        mine = dist.gather(
            (hashlib.sha256(request_text.encode()).hexdigest(), socket.gethostname())
        )
        # results go straight into the preallocated result file when every rank is on this
        # machine (disjoint writes through one page cache); ranks on several machines (a shared
        # network file system) each write whole chunk files, copied into result.npy at the end
        in_place = assemble and len({host for _, host in mine}) == 1
        if len({digest for digest, _ in mine}) > 1:
            raise ValueError(
                "ranks disagree on the run (data set, targets or parameters differ between "
                "processes); every rank must call run_over with the same arguments"
            )
        if verdict["complete"]:
            manifest = read_manifest(out)
            return RunSummary(out, n, 0, n, manifest.get("skipped", []), 0.0, 0.0,
                              dist.rank, dist.world)

        # 2. every rank computes its share of the chunks not done yet
        done = _done_chunks(out, n_chunks)
        todo = [k for k in range(n_chunks) if k % dist.world == dist.rank and k not in done]
        reused = sum(min((k + 1) * batch_size, n) - k * batch_size for k in done)
        error: BaseException | None = None
        computed, seconds, mine = 0, 0.0, []
        try:
            computed, seconds, mine = _work(
                attribution, data, todo, batch_size, n, stimulus_ids, kind, target_value,
                on_error, num_workers, pin_memory, device, show_progress, dist, out,
                attribute_kwargs, seed, in_place,
            )
        except Exception as err:  # noqa: BLE001 - re-raised after telling the other ranks
            error = err
        ranks = {k: r for r, chunks in enumerate(_agree(dist, error, mine)) for k in chunks}

        # 3. rank 0 assembles and writes the final manifest
        error = None
        skipped: list[dict[str, Any]] = []
        if dist.rank == 0:
            try:
                skipped = _finalise(out, n_chunks, batch_size, n, on_error, dist.world,
                                    assemble, ranks)
            except Exception as err:  # noqa: BLE001
                error = err
        skipped = _agree(dist, error, skipped)[0]
        rate = computed / seconds if seconds > 0 else 0.0
        summary = RunSummary(out, n, computed, reused, skipped, seconds, rate, dist.rank,
                             dist.world)
        logger.info("run_over %s -> %s: %s", request["attribution"]["class"], out, summary)
        return summary
    finally:
        dist.close()


def _prepare(out: Path, request: dict[str, Any], overwrite: bool, assemble: bool) -> bool:
    """Check ``out`` (rank 0). Returns True when the same run is already complete."""
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        try:
            manifest = read_manifest(out)
        except json.JSONDecodeError as err:
            raise ValueError(f"{manifest_path} is not valid JSON ({err})") from None
        old = manifest.get("request", {})
        if manifest.get("format") != FORMAT or old != request:
            if not overwrite:
                diffs = _differences(old, request) if manifest.get("format") == FORMAT else [
                    "format"]
                raise ValueError(
                    f"{out} holds a different run (differs in: {', '.join(diffs)}); nothing was "
                    "changed. Use another folder, or overwrite=True to replace it"
                )
            _remove_run(out)
        elif manifest.get("status") == "complete":
            target = manifest.get("result")
            if target is None or (out / target).is_file():
                return True
    elif any((out / name).exists() for name in (CHUNKS, RESULT, PARTIAL, DONE_LOG)):
        if not overwrite:
            raise ValueError(
                f"{out} holds run files ({CHUNKS}/, {RESULT} or {PARTIAL}) but no {MANIFEST}; "
                "nothing was changed. Use another folder, or overwrite=True to replace them"
            )
        _remove_run(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / PARTIAL).is_file():  # a log left without its data file lists nothing
        (out / DONE_LOG).unlink(missing_ok=True)
    if (out / CHUNKS).is_dir():  # created only when chunk files or sidecars are written
        for stale in (out / CHUNKS).glob("*.tmp-*"):
            stale.unlink()
    for stale in out.glob("*.tmp-*"):
        stale.unlink()
    if not manifest_path.is_file():
        _dump_json(manifest_path, {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "status": "running",
            "created": _now(),
            "request": request,
        })
    return False


def _remove_run(out: Path) -> None:
    shutil.rmtree(out / CHUNKS, ignore_errors=True)
    for name in (RESULT, PARTIAL, DONE_LOG, MANIFEST):
        (out / name).unlink(missing_ok=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _work(
    attribution: Any, data: Any, todo: list[int], batch_size: int, n: int, ids: list[str],
    kind: str, target_value: Any, on_error: str, num_workers: int, pin_memory: bool,
    device: Any, show_progress: bool, dist: _Dist, out: Path, kwargs: dict[str, Any],
    seed: int | None, in_place: bool,
) -> tuple[int, float, list[int]]:
    folder = out / CHUNKS
    partial: _Partial | None = None
    total = sum(min((k + 1) * batch_size, n) - k * batch_size for k in todo)
    start = time.perf_counter()
    computed = 0
    desc = type(attribution).__name__ + (f" rank {dist.rank}" if dist.world > 1 else "")
    mine: list[int] = []
    with contextlib.ExitStack() as stack, tqdm(
        total=total, desc=desc, unit="item", disable=not show_progress,
        position=dist.rank if dist.world > 1 else None, leave=True,
    ) as bar:
        for batch in _batches(data, todo, batch_size, n, num_workers, pin_memory):
            skipped = [{"index": i, "id": ids[i], "error": msg} for i, msg in batch.errors]
            if skipped and on_error == "raise":
                first = skipped[0]
                raise ItemLoadError(
                    f"item {first['index']} ({first['id']}) could not be loaded: "
                    f"{first['error']}; completed chunks are kept. Fix or remove it, or pass "
                    "on_error='skip' to skip unreadable items"
                )
            for record in skipped:
                logger.warning("skipping item %d (%s): %s", record["index"], record["id"],
                               record["error"])
            array = None
            if batch.images is not None:
                images = batch.images if device is None else batch.images.to(device)
                positions = [batch.indices[p] for p in batch.ok]
                if kind == "per_item":
                    target = [target_value[i] for i in positions]
                else:
                    target = target_value
                with _seeded(seed, batch.chunk, device):
                    result = attribution.attribute(images, target=target, **kwargs)
                array = _to_numpy(result, len(positions))
                if batch.errors:
                    full = np.full((len(batch.indices), *array.shape[1:]),
                                   _fill_value(array.dtype), dtype=array.dtype)
                    full[batch.ok] = array
                    array = full
            name = _chunk_name(batch.chunk)
            if array is not None and in_place and partial is None:
                partial = _Partial.open(out, n, array.shape[1:], array.dtype,
                                        exclusive=dist.world == 1)
                if partial is None:
                    in_place = False
                else:
                    stack.callback(partial.close)
            if array is not None and partial is not None:
                # the rows first; the done-log line (appended last) says they are there
                partial.write(batch.indices[0], array)
            if skipped or (array is not None and partial is None):
                folder.mkdir(exist_ok=True)
            if skipped:  # the sidecar goes before the .npy or the line that marks it done
                _dump_json(folder / f"{name}.json", {
                    "chunk": batch.chunk,
                    "file": None if array is None else PARTIAL if partial else f"{name}.npy",
                    "skipped": skipped,
                })
            if array is not None:
                if partial is not None:
                    partial.mark_done(batch.chunk)
                else:
                    _write_atomic(folder / f"{name}.npy", lambda f, a=array: np.save(f, a))
            mine.append(batch.chunk)
            computed += len(batch.indices)
            bar.update(len(batch.indices))
    return computed, time.perf_counter() - start, mine


@contextlib.contextmanager
def _seeded(seed: int | None, chunk: int, device: torch.device | None) -> Iterator[None]:
    """Seed the CPU generator (and ``device``'s) with ``seed + chunk``, restoring them after."""
    if seed is None:
        yield
        return
    on_device = device is not None and device.type != "cpu"
    with torch.random.fork_rng(
        devices=[device] if on_device else [], device_type=device.type if on_device else "cpu"
    ):
        if on_device:
            torch.manual_seed(seed + chunk)  # every generator (the device's is initialised)
        else:
            # only the CPU generator: torch.manual_seed would also queue a lazy seeding (with a
            # recorded stack trace) for each uninitialised accelerator backend, every chunk
            torch.default_generator.manual_seed(seed + chunk)
        yield


def _to_numpy(result: Any, n: int) -> np.ndarray:
    if not isinstance(result, Tensor):
        raise TypeError(
            f"run_over needs attribute() to return one batch-first tensor, got "
            f"{type(result).__name__}"
        )
    if result.dim() == 0 or result.shape[0] != n:
        raise ValueError(
            f"attribute() returned shape {tuple(result.shape)} for a batch of {n} items; "
            "run_over needs one result per item along the first dimension"
        )
    result = result.detach()
    if result.dtype == torch.bfloat16:
        result = result.float()
    return result.cpu().numpy()


def _fill_value(dtype: np.dtype) -> Any:
    if np.issubdtype(dtype, np.inexact):
        return np.nan
    if dtype == np.bool_:
        return False
    return 0


def _finalise(
    out: Path, n_chunks: int, chunk_size: int, n: int, on_error: str, world: int,
    assemble: bool, ranks: dict[int, int],
) -> list[dict[str, Any]]:
    """Rank 0, once every chunk is done: complete ``result.npy`` (or the chunk files), write the
    final manifest, remove the chunks. Returns the skipped items."""
    folder = out / CHUNKS
    done = _done_chunks(out, n_chunks)
    for k, record in done.items():
        record["start"], record["stop"] = k * chunk_size, min((k + 1) * chunk_size, n)
    missing = [k for k in range(n_chunks) if k not in done]
    if missing:
        raise RuntimeError(f"chunks {missing[:10]} of {out} are missing after the run")
    with_data = [done[k] for k in range(n_chunks) if done[k]["file"] is not None]
    skipped = [s for k in range(n_chunks) for s in done[k]["skipped"]]
    if not with_data:
        raise ValueError(
            f"no item of the data set could be loaded; first errors: "
            f"{[s['id'] + ': ' + s['error'] for s in skipped[:3]]}"
        )
    first = (out if with_data[0]["file"] == PARTIAL else folder) / with_data[0]["file"]
    with open(first, "rb") as f:
        shape, dtype = _npy_header(f)
    item_shape = tuple(shape[1:])
    fill = _fill_value(dtype)
    if assemble:
        # chunks written in place are already there; copy in those written as files (by ranks
        # on other machines, or by an earlier call), fill the rows of all-skipped chunks
        copy = [k for k in range(n_chunks) if done[k]["file"] != PARTIAL]
        partial = _Partial.open(out, n, item_shape, dtype, exclusive=True) if copy else None
        if copy and partial is None:  # pragma: no cover - exclusive=True always opens it
            raise RuntimeError(f"could not create {out / PARTIAL}")
        try:
            for k in copy:
                record = done[k]
                rows = record["stop"] - record["start"]
                if record["file"] is None:
                    chunk = np.full((rows, *item_shape), fill, dtype=dtype)
                else:
                    chunk = np.load(folder / record["file"])
                if chunk.shape != (rows, *item_shape) or chunk.dtype != dtype:
                    raise ValueError(
                        f"chunk {k} has items of shape {chunk.shape[1:]} {chunk.dtype}, chunk "
                        f"{with_data[0]['chunk']} has {item_shape} {dtype}; attribute() must "
                        "return the same shape for every item"
                    )
                partial.write(record["start"], chunk)  # type: ignore[union-attr]
        finally:
            if partial is not None:
                partial.close()
        os.replace(out / PARTIAL, out / RESULT)
    else:
        in_place = np.load(out / PARTIAL, mmap_mode="r") if (out / PARTIAL).is_file() else None
        folder.mkdir(exist_ok=True)
        for k in range(n_chunks):
            record = done[k]
            if record["file"] is not None and record["file"] != PARTIAL:
                continue
            name = _chunk_name(k) + ".npy"
            if record["file"] is None:  # an all-skipped chunk still gets its rows
                rows = np.full((record["stop"] - record["start"], *item_shape), fill,
                               dtype=dtype)
            else:  # an earlier call wrote it in place
                rows = np.asarray(in_place[record["start"] : record["stop"]])
            if record["skipped"]:  # the sidecar names the chunk's new file
                _dump_json(folder / f"{_chunk_name(k)}.json",
                           {"chunk": k, "file": name, "skipped": record["skipped"]})
            _write_atomic(folder / name, lambda f, a=rows: np.save(f, a))
            record["file"] = name
        del in_place
        (out / PARTIAL).unlink(missing_ok=True)
        (out / DONE_LOG).unlink(missing_ok=True)
    manifest = read_manifest(out)
    import captum

    import dnnbrain_captum

    manifest.update({
        "status": "complete",
        "finished": _now(),
        "result": RESULT if assemble else None,
        "shape": [n, *item_shape],
        "item_shape": list(item_shape),
        "dtype": str(dtype),
        "fill_value": "NaN" if isinstance(fill, float) and math.isnan(fill) else fill,
        "on_error": on_error,
        "skipped": skipped,
        "world_size": world,
        "chunks": [
            {"chunk": k, "start": done[k]["start"], "stop": done[k]["stop"],
             "rank": ranks.get(k),
             "file": None if assemble else f"{CHUNKS}/{done[k]['file']}"}
            for k in range(n_chunks)
        ],
        "software": {
            "dnnbrain_captum": dnnbrain_captum.__version__,
            "torch": torch.__version__,
            "captum": captum.__version__,
            "numpy": np.__version__,
        },
    })
    _dump_json(out / MANIFEST, manifest)
    if assemble:
        (out / DONE_LOG).unlink(missing_ok=True)
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
    return skipped


def read_results(out: str | os.PathLike[str], mmap: bool = True) -> np.ndarray:
    """The results of a completed :func:`run_over` as one array in data-set order.

    Parameters
    ----------
    out : path
        The run's output folder.
    mmap : bool
        Memory-map ``result.npy`` read-only (default) instead of reading it into memory.
        A run kept as chunks (``assemble=False``) is concatenated in memory.

    Returns
    -------
    numpy.ndarray of shape (n_items, *item_shape)
        Row ``i`` is item ``i``; rows of skipped items hold the manifest's ``fill_value``.

    Raises
    ------
    FileNotFoundError
        No manifest in ``out``.
    ValueError
        The run is not complete (rerun :func:`run_over` with the same arguments to finish it).

    Examples
    --------
    See :func:`run_over`.
    """
    out = Path(out)
    manifest = read_manifest(out)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{out / MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("status") != "complete":
        n_chunks = math.ceil(manifest["request"]["n_items"] / manifest["request"]["chunk_size"])
        done = len(_done_chunks(out, n_chunks))
        raise ValueError(
            f"the run in {out} is not complete ({done} of {n_chunks} chunks done); rerun "
            "run_over with the same arguments to finish it"
        )
    if manifest.get("result"):
        return np.load(out / manifest["result"], mmap_mode="r" if mmap else None)
    parts = [np.load(out / c["file"], mmap_mode="r") for c in manifest["chunks"]]
    return np.concatenate(parts, axis=0)
