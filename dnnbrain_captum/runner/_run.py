"""The outline of a run: check the folder (locked), compute the chunks not done, finish."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dnnbrain_captum.runner import _lock
from dnnbrain_captum.runner._dist import _agree, _Dist
from dnnbrain_captum.runner._finish import finish, remove_private
from dnnbrain_captum.runner._manifest import check_folder, reopen, verified_result
from dnnbrain_captum.runner._request import (
    _describe,
    _ids_of,
    _jsonable,
    _model_of,
    _normalise_targets,
)
from dnnbrain_captum.runner._resume import done_chunks, repair_partial
from dnnbrain_captum.runner._storage import PARTIAL, RESULT, TMP
from dnnbrain_captum.runner._work import Plan, work

logger = logging.getLogger("dnnbrain_captum.runner")
_ON_ERROR = ("raise", "skip")


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
        NaN (0 for integer results) and it is listed in the manifest's ``skipped``. To refuse
        unreadable files before anything is written, check them first with
        :func:`dnnbrain_captum.io.check_images`.
    overwrite : bool
        Replace a previous run with different parameters in ``out``: exactly the files its
        manifest owns are removed, nothing else. Without it such a rerun is refused and ``out``
        is left unchanged. Files that no run of ours wrote (a ``result.npy`` or ``chunks/``
        without our manifest, a manifest we cannot read) are refused either way.
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
        ``out`` holds a run with different parameters (the differing keys are named), files no
        run of ours wrote, or a malformed manifest (named); bad ``targets``/``ids``/``on_error``;
        an item that does not load with ``on_error="raise"`` (:class:`ItemLoadError`, naming
        its index and id).
    FolderBusyError
        Another run holds the lock of ``out`` (the message names its process and host). A lock
        left by a killed process is taken over.

    Notes
    -----
    A chunk is reused only when its bytes match the SHA-256 recorded when it was written; a
    complete result is reused only when it matches ``result_sha256``. Anything else is
    recomputed. See ``docs/runner.md`` for the guarantees and what a crash can cost.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
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
    >>> one = saliency.attribute(images[3:4], target=int(labels[3]))[0]
    >>> bool(np.allclose(maps[3], one, atol=1e-6))
    True
    >>> run_over(saliency, images, targets=labels, out=folder, batch_size=4).reused
    10
    """
    plan, request = _plan(
        attribution,
        dataset_or_loader,
        targets,
        out,
        batch_size,
        ids,
        on_error,
        assemble,
        num_workers,
        device,
        seed,
        show_progress,
        attribute_kwargs,
    )
    dist = _Dist()
    ours: list[str] = []  # what rank 0 took: the lock, then the private folder
    try:
        # 1. rank 0 locks the folder, checks it and finds the verified done chunks
        verdict = _on_rank0(dist, lambda: _prepare(plan, request, overwrite, ours))
        in_place = _check_ranks(dist, plan, request)
        if verdict["complete"]:
            return RunSummary(
                plan.out, plan.n, 0, plan.n, verdict["skipped"], 0.0, 0.0, dist.rank, dist.world
            )
        done = verdict["done"]
        reused = sum(plan.rows(k)[1] - plan.rows(k)[0] for k in done)

        # 2. every rank computes its share of the chunks not done yet
        todo = [k for k in range(plan.n_chunks) if k % dist.world == dist.rank and k not in done]
        error: BaseException | None = None
        computed, seconds, records = 0, 0.0, []
        try:
            computed, seconds, records = work(plan, todo, dist.rank, dist.world, in_place)
        except Exception as err:  # noqa: BLE001 - re-raised after telling the other ranks
            error = err
        gathered = _agree(dist, error, records)

        # 3. rank 0 completes the result, checksums it and writes the final manifest
        ranks = {r["chunk"]: rank for rank, rs in enumerate(gathered) for r in rs}
        done.update({r["chunk"]: r for rs in gathered for r in rs})
        skipped = _on_rank0(dist, lambda: {"skipped": finish(plan, done, dist.world, ranks)})
        rate = computed / seconds if seconds > 0 else 0.0
        summary = RunSummary(plan.out, plan.n, computed, reused, skipped["skipped"], seconds)
        summary.items_per_second, summary.rank, summary.world_size = rate, dist.rank, dist.world
        logger.info("run_over %s -> %s: %s", request["attribution"]["class"], plan.out, summary)
        return summary
    finally:
        _release(dist, plan.out, ours)


def _plan(
    attribution: Any,
    data: Any,
    targets: Any,
    out: Any,
    batch_size: int | None,
    ids: Sequence[Any] | None,
    on_error: str,
    assemble: bool,
    num_workers: int | None,
    device: Any,
    seed: int | None,
    show_progress: bool,
    kwargs: dict[str, Any],
) -> tuple[Plan, dict[str, Any]]:
    """Check the arguments; the run's plan and its request (what identifies it)."""
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not callable(getattr(attribution, "attribute", None)):
        raise TypeError(
            f"attribution must have an attribute() method, got {type(attribution).__name__}"
        )
    pin_memory = False
    if isinstance(data, DataLoader):
        batch_size = data.batch_size if batch_size is None else batch_size
        num_workers = data.num_workers if num_workers is None else num_workers
        pin_memory, data = data.pin_memory, data.dataset
    batch_size = 32 if batch_size is None else batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    try:
        n = len(data)
    except TypeError:
        raise TypeError(
            f"dataset_or_loader must be a map-style data set with len(), got {type(data).__name__}"
        ) from None
    if n == 0:
        raise ValueError("the data set is empty")
    stimulus_ids = _ids_of(data, n, ids)
    kind, target_value, target_json = _normalise_targets(targets, n)
    model = _model_of(attribution)
    request = json.loads(
        json.dumps(
            {  # the canonical JSON form (lists, string keys)
                "attribution": _describe(attribution),
                "parameters": {k: _jsonable(v, model) for k, v in sorted(kwargs.items())},
                "n_items": n,
                "chunk_size": batch_size,
                "seed": seed,
                "stimulus_ids": stimulus_ids,
                "targets": {"kind": kind, "value": target_json},
            },
            allow_nan=False,
        )
    )
    plan = Plan(
        attribution,
        data,
        Path(out),
        n,
        batch_size,
        stimulus_ids,
        kind,
        target_value,
        on_error,
        num_workers or 0,
        pin_memory,
        _device(model, device),
        seed,
        show_progress,
        assemble,
        kwargs,
    )
    return plan, request


def _device(model: Any, device: Any) -> torch.device | None:
    """The given device, else the device of the model's first parameter."""
    if device is None and isinstance(model, nn.Module):
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else None
    return None if device is None else torch.device(device)


def _prepare(
    plan: Plan, request: dict[str, Any], overwrite: bool, ours: list[str]
) -> dict[str, Any]:
    """Rank 0: lock ``out``, check it, and find what is done (verified). ``ours`` records
    what was taken ("lock", "private")."""
    out = plan.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {out} is a file, not a folder")
    _lock.acquire(out)
    ours.append("lock")
    manifest = check_folder(out, request, overwrite)
    ours.append("private")
    (out / TMP).mkdir(exist_ok=True)
    if manifest is not None and manifest["status"] == "complete":
        if verified_result(out, manifest):
            return {"complete": True, "skipped": manifest["skipped"], "done": {}}
        reopen(out, manifest)
    if (out / RESULT).is_file():  # killed between completing result.npy and the manifest
        if (out / PARTIAL).exists():
            (out / RESULT).unlink()
        else:
            os.replace(out / RESULT, out / PARTIAL)
    repair_partial(out, plan.n)
    done = done_chunks(out, plan.n_chunks, plan.chunk_size, plan.n)
    return {"complete": False, "skipped": [], "done": done}


def _on_rank0(dist: _Dist, step: Any) -> dict[str, Any]:
    """Run ``step()`` on rank 0 and give its result (or its error) to every rank."""
    verdict: dict[str, Any] = {"error": None, "value": None}
    if dist.rank == 0:
        try:
            verdict["value"] = step()
        except Exception as err:  # noqa: BLE001 - every rank raises it below
            verdict["error"] = err
    verdict = dist.broadcast(verdict)
    if verdict["error"] is not None:
        raise verdict["error"]
    return verdict["value"]


def _check_ranks(dist: _Dist, plan: Plan, request: dict[str, Any]) -> bool:
    """Every rank must run the same request; True when rows can be written in place (every
    rank on this machine: disjoint writes through one page cache; ranks on several machines
    write whole chunk files, copied into result.npy at the end)."""
    text = json.dumps(request, allow_nan=False)
    mine = dist.gather((hashlib.sha256(text.encode()).hexdigest(), socket.gethostname()))
    if len({digest for digest, _ in mine}) > 1:
        raise ValueError(
            "ranks disagree on the run (data set, targets or parameters differ between "
            "processes); every rank must call run_over with the same arguments"
        )
    return plan.assemble and len({host for _, host in mine}) == 1


def _release(dist: _Dist, out: Path, ours: list[str]) -> None:
    """Rank 0 (every rank has stopped writing): remove the private folder, unlock."""
    try:
        if "private" in ours:
            remove_private(out)
        if "lock" in ours:
            _lock.release(out)
    finally:
        dist.close()
