"""The work loop of one rank: compute its chunks and store each with its checksum."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from dnnbrain_captum.runner._data import _batches
from dnnbrain_captum.runner._storage import (
    CHUNKS,
    PARTIAL,
    Partial,
    chunk_name,
    dump_json,
    save_npy,
)

logger = logging.getLogger("dnnbrain_captum.runner")


class ItemLoadError(ValueError):
    """An item of the data set could not be loaded; the message names it (index and id)."""


@dataclass
class Plan:
    """Everything the ranks agree on about a run (the same on every rank)."""

    attribution: Any
    data: Any
    out: Path
    n: int
    chunk_size: int
    ids: list[str]
    kind: str  # targets: "none", "single" or "per_item"
    target_value: Any
    on_error: str
    num_workers: int
    pin_memory: bool
    device: torch.device | None
    seed: int | None
    show_progress: bool
    assemble: bool
    kwargs: dict[str, Any]

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk_size)

    def rows(self, k: int) -> tuple[int, int]:
        """Item range ``[start, stop)`` of chunk ``k``."""
        return k * self.chunk_size, min((k + 1) * self.chunk_size, self.n)


def work(
    plan: Plan, todo: list[int], rank: int, world: int, in_place: bool
) -> tuple[int, float, list[dict[str, Any]]]:
    """Compute ``todo`` (chunk indices); returns (items, seconds, the chunks' done records)."""
    store = _Store(plan, in_place, exclusive=world == 1)
    total = sum(plan.rows(k)[1] - plan.rows(k)[0] for k in todo)
    desc = type(plan.attribution).__name__ + (f" rank {rank}" if world > 1 else "")
    start, computed, records = time.perf_counter(), 0, []
    with (
        contextlib.closing(store),
        tqdm(
            total=total,
            desc=desc,
            unit="item",
            disable=not plan.show_progress,
            position=rank if world > 1 else None,
            leave=True,
        ) as bar,
    ):
        for batch in _batches(
            plan.data, todo, plan.chunk_size, plan.n, plan.num_workers, plan.pin_memory
        ):
            skipped = _skipped(plan, batch.errors)
            array = None if batch.images is None else _compute(plan, batch)
            records.append(store.put(batch.chunk, array, skipped))
            computed += len(batch.indices)
            bar.update(len(batch.indices))
    return computed, time.perf_counter() - start, records


def _skipped(plan: Plan, errors: list[tuple[int, str]]) -> list[dict[str, Any]]:
    skipped = [{"index": i, "id": plan.ids[i], "error": msg} for i, msg in errors]
    if skipped and plan.on_error == "raise":
        first = skipped[0]
        raise ItemLoadError(
            f"item {first['index']} ({first['id']}) could not be loaded: {first['error']}; "
            "completed chunks are kept. Fix or remove it, or pass on_error='skip' to skip "
            "unreadable items"
        )
    for record in skipped:
        logger.warning("skipping item %d (%s): %s", record["index"], record["id"], record["error"])
    return skipped


def _compute(plan: Plan, batch: Any) -> np.ndarray:
    """The chunk's rows; items that did not load get the fill value."""
    images = batch.images if plan.device is None else batch.images.to(plan.device)
    positions = [batch.indices[p] for p in batch.ok]
    target = plan.target_value
    if plan.kind == "per_item":
        target = [plan.target_value[i] for i in positions]
    with _seeded(plan.seed, batch.chunk, plan.device):
        result = plan.attribution.attribute(images, target=target, **plan.kwargs)
    array = _to_numpy(result, len(positions))
    if batch.errors:
        full = np.full(
            (len(batch.indices), *array.shape[1:]), fill_value(array.dtype), dtype=array.dtype
        )
        full[batch.ok] = array
        array = full
    return array


class _Store:
    """Where a rank's chunks go: rows in place into ``result.partial.npy`` (then a done-log
    line with their SHA-256), or a chunk file (then a sidecar with its SHA-256)."""

    def __init__(self, plan: Plan, in_place: bool, exclusive: bool) -> None:
        self.plan, self.in_place, self.exclusive = plan, in_place, exclusive
        self.partial: Partial | None = None

    def put(
        self, k: int, array: np.ndarray | None, skipped: list[dict[str, Any]]
    ) -> dict[str, Any]:
        out = self.plan.out
        if array is not None and self.in_place and self.partial is None:
            self.partial = Partial.create(
                out, self.plan.n, array.shape[1:], array.dtype, self.exclusive
            )
            self.in_place = self.partial is not None
        record: dict[str, Any] = {"chunk": k, "file": None, "sha256": None, "skipped": skipped}
        if array is not None and self.partial is not None:
            record["sha256"] = self.partial.write(self.plan.rows(k)[0], array)
            self.partial.mark_done({"chunk": k, "sha256": record["sha256"], "skipped": skipped})
            return {**record, "file": PARTIAL}
        (out / CHUNKS).mkdir(exist_ok=True)
        if array is not None:
            record["file"] = f"{chunk_name(k)}.npy"
            record["sha256"] = save_npy(out, out / CHUNKS / record["file"], array)
        dump_json(out, out / CHUNKS / f"{chunk_name(k)}.json", record)  # marks it done
        return record

    def close(self) -> None:
        if self.partial is not None:
            self.partial.close()


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


def fill_value(dtype: np.dtype) -> Any:
    """The value of the rows of skipped items: NaN, False or 0."""
    if np.issubdtype(dtype, np.inexact):
        return np.nan
    if dtype == np.bool_:
        return False
    return 0
