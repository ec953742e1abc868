"""Geometry rules of operations that move spatial axes: reshapes, permutes, indexing, joins,
splits, reductions and broadcasts."""

from __future__ import annotations

import torch
from torch import Tensor

from dnnbrain_captum.receptive_field._rules import Call, Rule, _merge
from dnnbrain_captum.receptive_field._states import (
    Affine,
    Axis,
    Flat,
    Spatial,
    State,
    Tokens,
    _flat_of,
    reindexed,
    sliding,
    union,
)

__all__ = ["REDUCTIONS", "prefix_products"]


def prefix_products(shape: list[int]) -> list[int]:
    """``[1, s0, s0*s1, ...]``: the element stride, in a contiguous layout, of every boundary."""
    products = [1]
    for size in shape:
        products.append(products[-1] * size)
    return products


def _reshape(call: Call) -> State:
    x, st = call.spatial_input()
    out = call.outputs[0]
    in_shape, out_shape = list(x.shape), list(out.shape)
    in_pre, out_pre = prefix_products(in_shape), prefix_products(out_shape)
    dh, dw = st.dims
    if dw == dh + 1:  # H and W merged into one token axis (row-major), as in ViT patch embeddings
        for e in range(len(out_shape)):
            if out_pre[e] == in_pre[dh] and out_pre[e + 1] == in_pre[dw + 1]:
                if out_shape[e] == in_shape[dh] * in_shape[dw] and in_shape[dh] * in_shape[dw] > 1:
                    return Tokens(e, st.axes)
    dims = []
    for d in st.dims:
        candidates = [
            e
            for e in range(len(out_shape))
            if out_shape[e] == in_shape[d]
            and out_pre[e] == in_pre[d]
            and out_pre[e + 1] == in_pre[d + 1]
        ]
        if not candidates:
            return _flat_of(st)
        same_end = [e for e in candidates if len(out_shape) - e == len(in_shape) - d]
        dims.append(same_end[0] if same_end else candidates[0])
    if dims[0] >= dims[1]:
        return _flat_of(st)
    return Spatial((dims[0], dims[1]), st.axes)


def _squeeze(call: Call) -> State:
    x, st = call.spatial_input()
    dim = call.arg(1, "dim")
    nd = x.dim()
    if dim is None:
        removed = [d for d in range(nd) if x.shape[d] == 1]
    else:
        dims = dim if isinstance(dim, (list, tuple)) else [dim]
        removed = [int(d) % nd for d in dims if x.shape[int(d) % nd] == 1]
    if any(d in removed for d in st.dims):
        return _flat_of(st)
    return Spatial(
        tuple(d - sum(r < d for r in removed) for d in st.dims),  # type: ignore[arg-type]
        st.axes,
    )


def _permutation(call: Call) -> State:
    # Run the same call on a probe whose sizes are distinct primes: the output's sizes say
    # where each input axis went.
    x, st = call.spatial_input()
    primes = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37][: x.dim()]
    if len(primes) < x.dim():
        raise call.fail("too many dimensions")
    probe = torch.empty(primes, device="meta")
    func = call.tracer.current_func
    result = func(probe, *call.args[1:], **call.kwargs)
    sizes = list(result.shape)
    dims = tuple(sizes.index(primes[d]) for d in st.dims)
    return Spatial(dims, st.axes)  # type: ignore[arg-type]


def _getitem(call: Call) -> State:
    x, st = call.spatial_input()
    index = call.args[1]
    items = list(index) if isinstance(index, tuple) else [index]
    for it in items:
        if not (it is None or it is Ellipsis or isinstance(it, (int, slice))) or isinstance(
            it, bool
        ):
            raise call.fail("advanced (tensor, list or boolean) indexing is not supported")
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items = items[:at] + [slice(None)] * (x.dim() - consumed) + items[at + 1 :]
    items += [slice(None)] * (x.dim() - consumed)
    out = call.outputs[0]
    in_d = out_d = 0
    new_dims: dict[int, int] = {}
    new_axes: dict[int, Axis] = {}
    picked: dict[int, int] = {}
    for it in items:
        if it is None:
            out_d += 1
            continue
        if isinstance(it, int):
            if in_d in st.dims:
                picked[st.dims.index(in_d)] = it % x.shape[in_d]
            in_d += 1
            continue
        if in_d in st.dims:
            a = st.dims.index(in_d)
            start, _, step = it.indices(int(x.shape[in_d]))
            n_out = int(out.shape[out_d])
            new_axes[a] = sliding(st.axes[a], 1, step, -start, 1, n_out)
            new_dims[a] = out_d
        in_d += 1
        out_d += 1
    if picked:
        box = []
        for a in range(2):
            axis = st.axes[a]
            if a in picked:
                lo, hi = int(axis.lo[picked[a]]), int(axis.hi[picked[a]])
                box.append((lo, hi) if lo < hi else (0, 0))
            else:
                box.append(new_axes[a].hull())
        return Flat((box[0], box[1]))
    return Spatial((new_dims[0], new_dims[1]), (new_axes[0], new_axes[1]))


def _cat(call: Call) -> State:
    tensors = call.arg(0, "tensors")
    dim = int(call.arg(1, "dim", 0))
    stacking = call.name == "stack"
    out = call.outputs[0]
    found: list[Spatial] = []
    for t in tensors:
        st = call.state(t)
        if st is None:
            continue
        if isinstance(st, Flat):
            raise call.fail("it joins a tensor without spatial layout to spatial maps")
        local = dim % (t.dim() + (1 if stacking else 0))
        if not stacking and local in st.dims:
            raise call.fail("it concatenates along a spatial axis")
        if stacking:
            dims = tuple(d + (1 if d >= local else 0) for d in st.dims)
        else:
            dims = st.dims
        found.append(Spatial(dims, st.axes))  # type: ignore[arg-type]
    del out
    dims0, axes = found[0].dims, found[0].axes
    for other in found[1:]:
        if other.dims != dims0:
            raise call.fail("its operands hold their spatial axes at different positions")
        axes = (union(axes[0], other.axes[0]), union(axes[1], other.axes[1]))
    return Spatial(dims0, axes)


def _split(call: Call) -> list[State | None]:
    x, st = call.spatial_input()
    position = 1 if call.name == "unbind" else 2
    dim = int(call.arg(position, "dim", 0)) % x.dim()
    if dim in st.dims:
        raise call.fail("it splits along a spatial axis")
    if call.name == "unbind":
        dims = tuple(d - (1 if d > dim else 0) for d in st.dims)
        return [Spatial(dims, st.axes) for _ in call.outputs]  # type: ignore[arg-type]
    return [st for _ in call.outputs]


def _linear(call: Call) -> State:
    x = call.args[0]
    st = call.state(x)
    if isinstance(st, Flat) or st is None:
        return st if st is not None else Flat(((0, 0), (0, 0)))
    if x.dim() - 1 in st.dims:
        return _flat_of(st)
    return st


REDUCTIONS = {
    "mean",
    "sum",
    "amax",
    "amin",
    "max",
    "min",
    "nanmean",
    "nansum",
    "prod",
    "std",
    "var",
    "logsumexp",
    "norm",
    "median",
    "nanmedian",
    "argmax",
    "argmin",
    "all",
    "any",
    "count_nonzero",
    "std_mean",
    "var_mean",
    "aminmax",
}


def _reduce(call: Call) -> list[State | None] | State:
    x = call.args[0]
    if call.name in ("max", "min") and isinstance(call.arg(1, "other"), Tensor):
        return _merge(call)
    if call.name in ("max", "min") and "other" in call.kwargs:
        return _merge(call)
    st = call.state(x)
    if not isinstance(st, Spatial):
        raise call.fail("its input has no spatial layout")
    position = 2 if call.name == "norm" else 1
    dim = call.arg(position, "dim")
    nd = x.dim()
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0 and call.name != "norm"):
        reduced = set(range(nd))
    else:
        dims = dim if isinstance(dim, (list, tuple)) else [dim]
        reduced = {int(d) % nd for d in dims}
    out = call.outputs[0]
    keepdim = out.dim() == nd
    if not keepdim:
        if any(d in reduced for d in st.dims):
            state: State = _flat_of(st)
        else:
            state = Spatial(
                tuple(d - sum(r < d for r in reduced) for d in st.dims),  # type: ignore[arg-type]
                st.axes,
            )
        return [state for _ in call.outputs]
    axes = tuple(
        sliding(st.axes[a], st.axes[a].n, st.axes[a].n, 0, 1, 1)
        if st.dims[a] in reduced
        else st.axes[a]
        for a in range(2)
    )
    return [Spatial(st.dims, axes) for _ in call.outputs]  # type: ignore[arg-type]


def _along_dim(position: int) -> Rule:
    def rule(call: Call) -> State:
        x, st = call.spatial_input()
        dim = call.arg(position, "dim")
        if dim is not None and int(dim) % x.dim() in st.dims:
            raise call.fail(
                "it mixes the units of a spatial axis (softmax/normalisation "
                "along a spatial dimension)"
            )
        return _merge(call)

    return rule


def _expand(call: Call) -> State:
    x, st = call.spatial_input()
    out = call.outputs[0]
    offset = out.dim() - x.dim()
    dims = (st.dims[0] + offset, st.dims[1] + offset)
    axes = []
    for a in range(2):
        n_in, n_out = int(x.shape[st.dims[a]]), int(out.shape[dims[a]])
        axis = st.axes[a]
        if n_in == n_out:
            axes.append(axis)
        else:
            f = axis.affine
            affine = None if f is None else Affine(f.size, 0, f.padding)
            axes.append(reindexed(axis, torch.zeros(n_out, dtype=torch.long), affine))
    return Spatial(dims, (axes[0], axes[1]))  # type: ignore[arg-type]


def _copy(call: Call) -> State | None:
    return call.state(call.args[1])


def _constant(call: Call) -> None:
    return None


def _same(call: Call) -> State:
    return _merge(call)
