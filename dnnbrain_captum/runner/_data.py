"""Batches of a data set in chunk order, with unreadable items reported as values."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset


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
        _Indexed(data),
        batch_sampler=ranges,
        collate_fn=_collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    for k, (indices, ok, images, errors) in zip(chunks, loader, strict=True):
        yield _Batch(k, indices, ok, images, errors)
