"""Patch geometry: the region of every operation's output that a window changes, per axis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dnnbrain_captum._spatial import Footprint


@dataclass
class _Axis:
    """Affected interval ``[lo, hi)`` and patch ``[start, start + length)`` per window."""

    lo: Tensor
    hi: Tensor
    length: int
    start: Tensor


def _axis(lo: Tensor, hi: Tensor, size: int) -> _Axis:
    lo = lo.clamp(0, size)
    hi = torch.maximum(hi.clamp(0, size), lo)
    length = int((hi - lo).max().item()) if lo.numel() else 1
    length = min(max(length, 1), size)
    start = lo.clamp(0, size - length)
    return _Axis(lo, hi, length, start)


def _through(axis: _Axis, fp: Footprint, size: int) -> _Axis:
    """Outputs of a sliding-window op whose window overlaps the input interval."""
    lo, hi = fp.reach(axis.lo, axis.hi)
    return _axis(lo, hi, size)


def _union(axes: Sequence[_Axis], size: int) -> _Axis:
    big = torch.full_like(axes[0].lo, size + 1)
    lo = torch.stack([torch.where(a.hi > a.lo, a.lo, big) for a in axes]).amin(0)
    hi = torch.stack([torch.where(a.hi > a.lo, a.hi, -big) for a in axes]).amax(0)
    lo = torch.where(hi < 0, torch.zeros_like(lo), lo)
    hi = torch.maximum(hi, lo)
    return _axis(lo, hi, size)


@dataclass
class _Edge:
    """How a consumer's input region is assembled from the producer, along one axis.

    Per window, the consumer reads producer positions ``[first, first + need)``; the
    producer's patch starts at ``place`` in that region (possibly outside it, partly or
    wholly); positions outside the producer are its padding (``pad_before`` / ``pad_after``
    positions are enough for every window).
    """

    first: Tensor
    need: int
    place: Tensor
    pad_before: int
    pad_after: int
    size: int  # producer's size along the axis


def _edge(consumer: _Axis, producer: _Axis, fp: Footprint, producer_size: int) -> _Edge:
    first = consumer.start * fp.stride - fp.padding
    need = (consumer.length - 1) * fp.stride + fp.span
    return _Edge(
        first=first,
        need=need,
        place=producer.start - first,
        pad_before=max(0, -int(first.min().item())),
        pad_after=max(0, int((first + need).max().item()) - producer_size),
        size=producer_size,
    )
