"""Geometry rules of element-wise, convolution, pooling and padding operations.

A rule receives the intercepted call (:class:`Call`: the function's name, its meta arguments
and output, and the tracer that knows every tensor's state) and returns the output's state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dnnbrain_captum._spatial import window_of_call
from dnnbrain_captum.receptive_field._states import (
    Affine,
    Flat,
    Spatial,
    State,
    Tokens,
    UnsupportedOperationError,
    _box_union,
    _iter_tensors,
    adaptive,
    reindexed,
    union,
    windowed,
)

if TYPE_CHECKING:
    from dnnbrain_captum.receptive_field._geometry import GeometryTracer

__all__ = ["Call", "Rule"]


class Call:
    """One intercepted call: the function, its (meta) arguments, output and input states."""

    def __init__(
        self,
        tracer: GeometryTracer,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: Any,
    ) -> None:
        self.tracer = tracer
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.out = out
        self.outputs = list(_iter_tensors(out))

    def arg(self, position: int, name: str, default: Any = None) -> Any:
        if name in self.kwargs:
            return self.kwargs[name]
        if len(self.args) > position:
            return self.args[position]
        return default

    def state(self, tensor: Any) -> State | None:
        return self.tracer.state(tensor) if isinstance(tensor, Tensor) else None

    def fail(self, why: str) -> UnsupportedOperationError:
        return self.tracer.error(self.name, why)

    def spatial_input(self) -> tuple[Tensor, Spatial]:
        x = self.args[0]
        st = self.state(x)
        if not isinstance(st, Spatial):
            raise self.fail("its input has no spatial layout any more")
        return x, st


# --------------------------------------------------------------------------- rules
Rule = Callable[[Call], "list[State | None] | State | None"]


def _elementwise(call: Call, gate: bool) -> State:
    out = call.outputs[0]
    nd = out.dim()
    found: list[Spatial] = []
    ignored = False
    operands = [(t, call.state(t)) for t in _iter_tensors((call.args, call.kwargs))]
    if any(isinstance(st, Tokens) for _, st in operands):
        return _token_elementwise(call, gate, operands)
    for t, st in operands:
        if not isinstance(st, Spatial):
            continue
        offset = nd - t.dim()
        dims = (st.dims[0] + offset, st.dims[1] + offset)
        sizes_in = (int(t.shape[st.dims[0]]), int(t.shape[st.dims[1]]))
        sizes_out = (int(out.shape[dims[0]]), int(out.shape[dims[1]]))
        expanded = any(t.stride(d) == 0 and t.shape[d] > 1 for d in st.dims)
        if sizes_in != sizes_out or (gate and expanded):
            if not gate:
                raise call.fail(f"it broadcasts a spatial map of size {sizes_in} to {sizes_out}")
            ignored = True
            continue
        found.append(Spatial(dims, st.axes))
    for t, st in operands:
        if not isinstance(st, Flat):
            continue
        if gate and _is_broadcast(t, out, nd - t.dim(), found):
            ignored = True
            continue
        raise call.fail(
            "it combines a tensor without spatial layout (pooled or flattened) with a "
            "spatial map; only a broadcast multiplicative gate (N, C, 1, 1), as in "
            "squeeze-and-excitation, is supported"
        )
    if not found:
        if ignored:
            raise call.fail("every spatial operand is a broadcast gate; nothing to follow")
        raise call.fail("no spatial operand")
    dims = found[0].dims
    axes = found[0].axes
    for other in found[1:]:
        if other.dims != dims:
            raise call.fail("its operands hold their spatial axes at different positions")
        axes = (union(axes[0], other.axes[0]), union(axes[1], other.axes[1]))
    return Spatial(dims, axes)


def _token_elementwise(call: Call, gate: bool, operands: list[tuple[Tensor, Any]]) -> Tokens:
    """An element-wise operation on token sequences: each token sees the union of its inputs."""
    out = call.outputs[0]
    nd = out.dim()
    found: list[Tokens] = []
    for t, st in operands:
        if isinstance(st, Spatial):
            raise call.fail("it combines a token sequence with a spatial map")
        if isinstance(st, Tokens):
            dim = st.dim + nd - t.dim()
            if int(t.shape[st.dim]) != int(out.shape[dim]) or t.stride(st.dim) == 0:
                raise call.fail("it broadcasts a token sequence along its token axis")
            found.append(Tokens(dim, st.axes, st.prefix))
    for t, st in operands:
        if not isinstance(st, Flat):
            continue
        local = found[0].dim - (nd - t.dim())
        if gate and (local < 0 or t.shape[local] == 1 or t.stride(local) == 0):
            continue
        raise call.fail(
            "it combines a tensor without spatial layout with a token sequence; only a "
            "multiplicative gate broadcast over the tokens is supported"
        )
    result = found[0]
    for other in found[1:]:
        if other.dim != result.dim or len(other.prefix) != len(result.prefix):
            raise call.fail("its token operands hold their tokens at different positions")
        axes = (union(result.axes[0], other.axes[0]), union(result.axes[1], other.axes[1]))
        prefix = tuple(_box_union([a, b]) for a, b in zip(result.prefix, other.prefix, strict=True))
        result = Tokens(result.dim, axes, prefix)
    return result


def _is_broadcast(t: Tensor, out: Tensor, offset: int, found: list[Spatial]) -> bool:
    # A gate is broadcast (size 1 or stride 0) over the output's spatial axes.
    nd = out.dim()
    dims = found[0].dims if found else (nd - 2, nd - 1)
    for d in dims:
        local = d - offset
        if local < 0:
            continue
        if t.shape[local] != 1 and t.stride(local) != 0:
            return False
    return True


def _merge(call: Call) -> State:
    return _elementwise(call, gate=False)


def _gate(call: Call) -> State:
    return _elementwise(call, gate=True)


def _last_two(call: Call, x: Tensor, st: Spatial) -> None:
    if st.dims != (x.dim() - 2, x.dim() - 1):
        raise call.fail("its spatial axes are not the last two dimensions of its input")


def _window(call: Call) -> State:
    """A registered sliding-window operation (the geometry core's footprint per axis)."""
    x, st = call.spatial_input()
    _last_two(call, x, st)
    window = window_of_call(call.name, call.args, call.kwargs)
    out = call.outputs[0]
    n = (int(out.shape[-2]), int(out.shape[-1]))
    axes = tuple(windowed(st.axes[a], window.axes[a], n[a]) for a in range(2))
    return Spatial((out.dim() - 2, out.dim() - 1), axes)  # type: ignore[arg-type]


def _adaptive(call: Call) -> State:
    x, st = call.spatial_input()
    _last_two(call, x, st)
    out = call.outputs[0]
    axes = (adaptive(st.axes[0], int(out.shape[-2])), adaptive(st.axes[1], int(out.shape[-1])))
    return Spatial((out.dim() - 2, out.dim() - 1), axes)


def _pad(call: Call) -> State:
    x, st = call.spatial_input()
    pad = list(call.arg(1, "pad"))
    mode = call.arg(2, "mode", "constant")
    out = call.outputs[0]
    nd = x.dim()
    axes = []
    for a in range(2):
        dim = st.dims[a]
        slot = 2 * (nd - 1 - dim)
        left = int(pad[slot]) if slot < len(pad) else 0
        axis = st.axes[a]
        n_out = int(out.shape[dim])
        f = axis.affine
        affine = None if f is None else Affine(f.size, f.jump, f.padding + left * f.jump)
        index = torch.arange(n_out) - left
        if mode == "constant" or left == 0 and n_out == axis.n:
            pass
        elif mode == "reflect":
            index = index.abs()
            index = torch.where(index > axis.n - 1, 2 * (axis.n - 1) - index, index)
        elif mode == "replicate":
            index = index.clamp(0, axis.n - 1)
        elif mode == "circular":
            index = index.remainder(axis.n)
        else:
            raise call.fail(f"padding mode {mode!r} is not supported")
        axes.append(reindexed(axis, index, affine))
    return Spatial(st.dims, (axes[0], axes[1]))
