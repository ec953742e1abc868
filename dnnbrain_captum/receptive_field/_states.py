"""States of the shape-only execution that tracks which input pixels every unit can see.

Each tensor that depends on the input carries a *state*:

* :class:`Spatial`: the tensor has an H and a W axis (at known positions); per axis an
  :class:`Axis` holds, for every unit, the exact half-open pixel interval its value depends on
  (hull of the union over all paths, borders and padding accounted for), and the affine
  receptive-field parameters (size r, jump j, effective padding P; Araujo et al. 2019) when
  the layer has them;
* :class:`Tokens`: the H x W grid lies flattened (row-major) along one *token* axis, after
  ``len(prefix)`` extra tokens (a vision transformer's class token), as in ``(N, 1 + H*W, D)``;
* :class:`Flat`: the spatial layout is gone (flatten, a Linear over a spatial axis, a global
  reduction without ``keepdim``); it keeps the pixel box seen by the union of its elements.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dnnbrain_captum._spatial import Footprint
from dnnbrain_captum._spatial import _pair as _pair  # noqa: F401 - read by _resample

__all__ = [
    "Affine",
    "Axis",
    "Box",
    "Flat",
    "Spatial",
    "State",
    "Tokens",
    "UnsupportedOperationError",
    "grouped",
    "input_axis",
]

Box = tuple[tuple[int, int], tuple[int, int]]

_EMPTY_LO = 2**62
_EMPTY_HI = -(2**62)


class UnsupportedOperationError(NotImplementedError):
    """An operation changes the spatial geometry in a way the analysis cannot follow."""


@dataclass(frozen=True)
class Affine:
    """Receptive-field arithmetic of one axis: unit i sees ``[i*jump - padding, ... + size)``."""

    size: int
    jump: int
    padding: int


@dataclass(frozen=True)
class Axis:
    """One spatial axis: exact per-unit pixel intervals ``[lo[i], hi[i])`` plus its affine form.

    Empty intervals (a unit that sees only padding) have ``lo > hi``.
    """

    lo: Tensor
    hi: Tensor
    affine: Affine | None

    @property
    def n(self) -> int:
        return int(self.lo.numel())

    def hull(self) -> tuple[int, int]:
        lo, hi = int(self.lo.min()), int(self.hi.max())
        return (lo, hi) if lo < hi else (0, 0)


@dataclass(frozen=True)
class Spatial:
    """A tensor with spatial axes at positions ``dims`` (H, W) and their geometry ``axes``."""

    dims: tuple[int, int]
    axes: tuple[Axis, Axis]

    def box(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return (self.axes[0].hull(), self.axes[1].hull())


@dataclass(frozen=True)
class Flat:
    """A tensor without spatial layout; ``box`` is the pixel box seen by all its elements."""

    box: tuple[tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class Tokens:
    """A grid flattened along the token axis ``dim``, after ``len(prefix)`` extra tokens.

    Token ``len(prefix) + i * W + j`` is grid unit (i, j) with the geometry ``axes``; extra
    token k sees the pixel box ``prefix[k]`` (empty, ``((0, 0), (0, 0))``, for a learned class
    token that does not depend on the input yet).
    """

    dim: int
    axes: tuple[Axis, Axis]
    prefix: tuple[Box, ...] = ()

    @property
    def n_tokens(self) -> int:
        return len(self.prefix) + self.axes[0].n * self.axes[1].n

    def grid_box(self) -> Box:
        return (self.axes[0].hull(), self.axes[1].hull())

    def box(self) -> Box:
        return _box_union([self.grid_box(), *self.prefix])


State = Spatial | Tokens | Flat


def input_axis(n: int) -> Axis:
    """The identity geometry of an input axis with ``n`` pixels."""
    lo = torch.arange(n)
    return Axis(lo, lo + 1, Affine(1, 1, 0))


def _gather(axis: Axis, index: Tensor, valid: Tensor, affine: Affine | None) -> Axis:
    safe = index.clamp(0, max(axis.n - 1, 0))
    lo = torch.where(valid, axis.lo[safe], _EMPTY_LO).amin(1)
    hi = torch.where(valid, axis.hi[safe], _EMPTY_HI).amax(1)
    return Axis(lo, hi, affine)


def sliding(axis: Axis, k: int, s: int, p: int, d: int, n_out: int) -> Axis:
    """Window of ``k`` taps, stride ``s``, left padding ``p``, dilation ``d`` (zero padding)."""
    return windowed(axis, Footprint(k, s, p, d), n_out)


def windowed(axis: Axis, fp: Footprint, n_out: int) -> Axis:
    """The geometry after a sliding window with footprint ``fp`` (the geometry core's taps)."""
    index = fp.taps(n_out)
    valid = (index >= 0) & (index < axis.n)
    a = axis.affine
    affine = (
        None
        if a is None
        else Affine(
            a.size + (fp.kernel - 1) * fp.dilation * a.jump,
            a.jump * fp.stride,
            a.padding + fp.padding * a.jump,
        )
    )
    return _gather(axis, index, valid, affine)


def adaptive(axis: Axis, n_out: int) -> Axis:
    """Adaptive pooling windows ``[floor(i*n/m), ceil((i+1)*n/m))``."""
    n_in = axis.n
    i = torch.arange(n_out)
    start = (i * n_in) // n_out
    end = ((i + 1) * n_in + n_out - 1) // n_out
    length = end - start
    kmax = int(length.max())
    index = start[:, None] + torch.arange(kmax)[None, :]
    valid = index < end[:, None]
    if n_out == 1:
        k, s = n_in, n_in
    elif bool((length == length[0]).all()) and bool((start == i * int(start[1])).all()):
        k, s = int(length[0]), int(start[1])
    else:
        k = s = 0
    a = axis.affine
    affine = (
        None if (a is None or k == 0) else Affine(a.size + (k - 1) * a.jump, a.jump * s, a.padding)
    )
    return _gather(axis, index, valid, affine)


def reindexed(axis: Axis, index: Tensor, affine: Affine | None) -> Axis:
    """Unit i of the result is unit ``index[i]`` of ``axis`` (out-of-range: empty)."""
    index = index[:, None]
    valid = (index >= 0) & (index < axis.n)
    return _gather(axis, index, valid, affine)


def union(a: Axis, b: Axis) -> Axis:
    """Per-unit hull of two geometries of the same axis (multi-path layers)."""
    lo, hi = torch.minimum(a.lo, b.lo), torch.maximum(a.hi, b.hi)
    fa, fb = a.affine, b.affine
    for inner, outer in ((a, b), (b, a)):  # one path's fields contain the other's
        if (
            outer.affine is not None
            and inner.affine is not None
            and bool((outer.lo == lo).all())
            and bool((outer.hi == hi).all())
            and _covers(outer.affine, inner.affine, a.n)
        ):
            return Axis(lo, hi, outer.affine)
    affine: Affine | None = None
    if fa is not None and fb is not None and fa.jump == fb.jump:
        pad = max(fa.padding, fb.padding)
        end = max(fa.size - fa.padding, fb.size - fb.padding)
        affine = Affine(end + pad, fa.jump, pad)
    return Axis(lo, hi, affine)


def grouped(axis: Axis, key: Tensor) -> Axis:
    """Unit i sees every unit j of ``axis`` with ``key[j] == key[i]`` (attention in groups).

    ``key`` has one entry per unit; a negative key marks a unit that sees nothing.
    """
    n = axis.n
    index = torch.arange(n)[None, :].expand(n, n)
    valid = (key[:, None] == key[None, :]) & (key[:, None] >= 0)
    return _gather(axis, index, valid, None)


def _covers(outer: Affine, inner: Affine, n: int) -> bool:
    """Whether the unclipped fields of ``outer`` contain those of ``inner`` for units 0..n-1.

    Field ends are linear in the unit index, so checking the first and last unit suffices.
    """
    for i in (0, max(n - 1, 0)):
        lo_out, lo_in = i * outer.jump - outer.padding, i * inner.jump - inner.padding
        if lo_in < lo_out or lo_in + inner.size > lo_out + outer.size:
            return False
    return True


def _flat_of(state: State) -> Flat:
    return state if isinstance(state, Flat) else Flat(state.box())


def _box_union(boxes: list[Box]) -> Box:
    real = [b for b in boxes if b[0][0] < b[0][1] and b[1][0] < b[1][1]]
    if not real:
        return ((0, 0), (0, 0))
    return (
        (min(b[0][0] for b in real), max(b[0][1] for b in real)),
        (min(b[1][0] for b in real), max(b[1][1] for b in real)),
    )


def _iter_tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _iter_tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _iter_tensors(item)


def _to_meta(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj if obj.is_meta else obj.detach().to("meta")
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_to_meta(o) for o in obj)
    if isinstance(obj, list):
        return [_to_meta(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_meta(v) for k, v in obj.items()}
    return obj


def _func_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__":
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", name)
    return str(name)
