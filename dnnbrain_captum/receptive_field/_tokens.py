"""Geometry rules for token sequences: a grid flattened along one axis (vision transformers).

A :class:`Tokens` state appears when a reshape merges the H and W axes of a spatial map into
one axis (ViT's patch embedding); a reshape that splits the token axis back into (H, W) gives
a spatial map again. Operations without a rule here see the sequence as a :class:`Flat`
tensor (the union box of all its tokens), which is what the analysis did before tokens were
tracked: exact for the union, silent about single tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dnnbrain_captum.receptive_field._rules import Call, Rule, _merge
from dnnbrain_captum.receptive_field._shape_rules import prefix_products
from dnnbrain_captum.receptive_field._states import (
    Box,
    Flat,
    Spatial,
    State,
    Tokens,
    _box_union,
    _flat_of,
    union,
)

__all__ = ["SHAPE_OPS", "TOKEN_RULES", "token_reduce", "token_box"]

_EMPTY: Box = ((0, 0), (0, 0))


def _token_input(call: Call) -> tuple[Tensor, Tokens]:
    x = call.args[0]
    st = call.state(x)
    if not isinstance(st, Tokens):
        raise call.fail("its input is not a token sequence")
    return x, st


def token_box(st: Tokens, k: int) -> Box:
    """The pixel box of token ``k`` (extra tokens first, then the grid in row-major order)."""
    if k < len(st.prefix):
        return st.prefix[k]
    i, j = divmod(k - len(st.prefix), st.axes[1].n)
    rows, cols = st.axes
    box = ((int(rows.lo[i]), int(rows.hi[i])), (int(cols.lo[j]), int(cols.hi[j])))
    return box if box[0][0] < box[0][1] and box[1][0] < box[1][1] else _EMPTY


def _reshape(call: Call) -> State:
    x, st = _token_input(call)
    out = call.outputs[0]
    in_shape, out_shape = list(x.shape), list(out.shape)
    in_pre, out_pre = prefix_products(in_shape), prefix_products(out_shape)
    d = st.dim
    for e in range(len(out_shape)):
        if out_pre[e] != in_pre[d]:
            continue
        if out_pre[e + 1] == in_pre[d + 1]:  # the token axis survives as it is
            return Tokens(e, st.axes, st.prefix)
        grid = (st.axes[0].n, st.axes[1].n)
        if not st.prefix and e + 1 < len(out_shape) and tuple(out_shape[e : e + 2]) == grid:
            return Spatial((e, e + 1), st.axes)  # split back into the (H, W) grid
    return _flat_of(st)


def _permutation(call: Call) -> State:
    x, st = _token_input(call)
    primes = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37][: x.dim()]
    probe = torch.empty(primes, device="meta")
    result = call.tracer.current_func(probe, *call.args[1:], **call.kwargs)
    return Tokens(list(result.shape).index(primes[st.dim]), st.axes, st.prefix)


def _getitem(call: Call) -> State:
    x, st = _token_input(call)
    index = call.args[1]
    items = list(index) if isinstance(index, tuple) else [index]
    if any(not (it is None or it is Ellipsis or isinstance(it, (int, slice))) for it in items):
        return _flat_of(st)
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items = items[:at] + [slice(None)] * (x.dim() - consumed) + items[at + 1 :]
    items += [slice(None)] * (x.dim() - consumed)
    in_d = out_d = 0
    for it in items:
        if it is None:
            out_d += 1
            continue
        if in_d == st.dim:
            n = int(x.shape[in_d])
            if isinstance(it, int):
                return Flat(token_box(st, it % n))
            return _sliced(st, it, n, out_d)
        in_d += 1
        out_d += 0 if isinstance(it, int) else 1
    raise call.fail("the index does not reach the token axis")  # pragma: no cover


def _sliced(st: Tokens, it: slice, n: int, out_d: int) -> State:
    start, stop, step = it.indices(n)
    kept = list(range(start, stop, step))
    n_prefix = len(st.prefix)
    if step == 1 and start <= n_prefix and stop == n:
        return Tokens(out_d, st.axes, st.prefix[start:])
    return Flat(_box_union([token_box(st, k) for k in kept]))


def _cat(call: Call) -> State:
    tensors = list(call.arg(0, "tensors"))
    dim = int(call.arg(1, "dim", 0))
    states = [call.state(t) for t in tensors]
    tokens = [(t, s) for t, s in zip(tensors, states, strict=True) if isinstance(s, Tokens)]
    t0, first = tokens[0]
    if call.name == "stack" or dim % t0.dim() != first.dim:
        return _same_layout_union(call, tokens, states)
    position = next(k for k, s in enumerate(states) if isinstance(s, Tokens))
    after = states[position + 1 :]
    if (
        len(tokens) > 1
        or any(s is not None for s in after)
        or any(int(t.shape[first.dim]) for t in tensors[position + 1 :])
    ):
        return Flat(_box_union([_flat_of(s).box for s in states if s is not None]))
    extra: list[Box] = []
    for t, s in zip(tensors[:position], states[:position], strict=True):
        box = _flat_of(s).box if s is not None else _EMPTY
        extra += [box] * int(t.shape[first.dim])
    return Tokens(first.dim, first.axes, (*extra, *first.prefix))


def _same_layout_union(call: Call, tokens: list[tuple[Tensor, Tokens]], states: list) -> State:
    if any(s is not None and not isinstance(s, Tokens) for s in states):
        raise call.fail("it joins a token sequence to a tensor of another layout")
    dims = {s.dim for _, s in tokens}
    if len(dims) != 1 or call.name == "stack":
        return Flat(_box_union([s.box() for _, s in tokens]))
    result = tokens[0][1]
    for _, other in tokens[1:]:
        if len(other.prefix) != len(result.prefix):
            return Flat(_box_union([s.box() for _, s in tokens]))
        axes = (union(result.axes[0], other.axes[0]), union(result.axes[1], other.axes[1]))
        prefix = tuple(_box_union([a, b]) for a, b in zip(result.prefix, other.prefix, strict=True))
        result = Tokens(result.dim, axes, prefix)
    return result


def _split(call: Call) -> list[State | None]:
    x, st = _token_input(call)
    position = 1 if call.name == "unbind" else 2
    dim = int(call.arg(position, "dim", 0)) % x.dim()
    if dim == st.dim:
        return [_flat_of(st) for _ in call.outputs]
    if call.name == "unbind":
        return [
            Tokens(st.dim - (1 if st.dim > dim else 0), st.axes, st.prefix) for _ in call.outputs
        ]
    return [st for _ in call.outputs]


def _linear(call: Call) -> State:
    x, st = _token_input(call)
    return _flat_of(st) if st.dim == x.dim() - 1 else st


def token_reduce(call: Call) -> list[State | None] | State:
    x, st = _token_input(call)
    if call.name in ("max", "min") and (
        isinstance(call.arg(1, "other"), Tensor) or "other" in call.kwargs
    ):
        return _merge(call)
    position = 2 if call.name == "norm" else 1
    dim = call.arg(position, "dim")
    nd = x.dim()
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        reduced = set(range(nd))
    else:
        reduced = {int(d) % nd for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
    keepdim = call.outputs[0].dim() == nd
    if st.dim in reduced:
        state: State = _flat_of(st)
    else:
        shift = 0 if keepdim else sum(r < st.dim for r in reduced)
        state = Tokens(st.dim - shift, st.axes, st.prefix)
    return [state for _ in call.outputs]


def _along_dim(position: int) -> Rule:
    def rule(call: Call) -> State:
        x, st = _token_input(call)
        dim = call.arg(position, "dim")
        if dim is not None and int(dim) % x.dim() == st.dim:
            return _flat_of(st)  # mixes the tokens: only the union is known
        return st

    return rule


def _expand(call: Call) -> State:
    x, st = _token_input(call)
    out = call.outputs[0]
    dim = st.dim + out.dim() - x.dim()
    if int(out.shape[dim]) != int(x.shape[st.dim]):
        return _flat_of(st)
    return Tokens(dim, st.axes, st.prefix)


# The shape operations by role, one entry per name: the token rules below and the spatial
# rules of ``_geometry.py`` both bind each role to a rule of their own (one list of names).
SHAPE_OPS: dict[str, str] = {
    **dict.fromkeys(
        "view reshape view_as reshape_as flatten unflatten ravel unsqueeze unsqueeze_".split(),
        "reshape",
    ),
    **dict.fromkeys(["squeeze", "squeeze_"], "squeeze"),
    **dict.fromkeys(
        "permute transpose transpose_ swapaxes swapdims movedim moveaxis t t_ T mT adjoint".split(),
        "permutation",
    ),
    "__getitem__": "getitem",
    **dict.fromkeys(["cat", "concat", "concatenate", "stack"], "cat"),
    **dict.fromkeys("chunk split tensor_split split_with_sizes unbind".split(), "split"),
    "linear": "linear",
    **dict.fromkeys(["softmax", "log_softmax"], "softmax"),
    "normalize": "normalize",
    **dict.fromkeys(["expand", "expand_as", "broadcast_to"], "expand"),
}

_TOKEN_ROLES: dict[str, Rule] = {
    "reshape": _reshape,
    "squeeze": _reshape,  # squeezing a size-1 axis is a reshape of the sequence
    "permutation": _permutation,
    "getitem": _getitem,
    "cat": _cat,
    "split": _split,
    "linear": _linear,
    "softmax": _along_dim(1),
    "normalize": _along_dim(2),
    "expand": _expand,
}
TOKEN_RULES: dict[str, Rule] = {name: _TOKEN_ROLES[role] for name, role in SHAPE_OPS.items()}
