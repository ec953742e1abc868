"""Shape-only execution of a model that tracks which input pixels every unit can see.

The model runs once on a ``meta`` tensor (shapes only, no arithmetic) under a
:class:`~torch.overrides.TorchFunctionMode` that sees every torch function, tensor method and
``torch.nn.functional`` call, including the functional ones written in ``forward`` methods
(``F.relu``, ``torch.cat``, ``x + y``, ``x.view``). Each tensor that depends on the input
carries a *state*:

* :class:`Spatial`: the tensor has an H and a W axis (at known positions); per axis an
  :class:`Axis` holds, for every unit, the exact half-open pixel interval its value depends on
  (hull of the union over all paths, borders and padding accounted for), and the affine
  receptive-field parameters (size r, jump j, effective padding P; Araujo et al. 2019) when
  the layer has them;
* :class:`Flat`: the spatial layout is gone (flatten, a Linear over a spatial axis, a global
  reduction without ``keepdim``); it keeps the pixel box seen by the union of its elements.

An operation on an input-dependent tensor that has no rule here raises
:class:`UnsupportedOperationError` naming the operation and the module that called it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = [
    "Affine",
    "Axis",
    "Flat",
    "GeometryTracer",
    "Spatial",
    "UnsupportedOperationError",
    "input_axis",
]

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


State = Spatial | Flat


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
    index = torch.arange(n_out)[:, None] * s - p + torch.arange(k)[None, :] * d
    valid = (index >= 0) & (index < axis.n)
    a = axis.affine
    affine = (
        None
        if a is None
        else Affine(a.size + (k - 1) * d * a.jump, a.jump * s, a.padding + p * a.jump)
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
    affine: Affine | None = None
    if fa is not None and fb is not None and fa.jump == fb.jump:
        pad = max(fa.padding, fb.padding)
        end = max(fa.size - fa.padding, fb.size - fb.padding)
        affine = Affine(end + pad, fa.jump, pad)
    return Axis(lo, hi, affine)


def _flat_of(state: State) -> Flat:
    return state if isinstance(state, Flat) else Flat(state.box())


def _box_union(
    boxes: list[tuple[tuple[int, int], tuple[int, int]]],
) -> tuple[tuple[int, int], tuple[int, int]]:
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


def _pair(value: Any, default: int) -> tuple[int, int]:
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return (default, default)
    if isinstance(value, (list, tuple)):
        return (
            (int(value[0]), int(value[-1])) if len(value) <= 2 else (int(value[-2]), int(value[-1]))
        )
    return (int(value), int(value))


class _Call:
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
Rule = Callable[[_Call], "list[State | None] | State | None"]


def _elementwise(call: _Call, gate: bool) -> State:
    out = call.outputs[0]
    nd = out.dim()
    found: list[Spatial] = []
    ignored = False
    operands = [(t, call.state(t)) for t in _iter_tensors((call.args, call.kwargs))]
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


def _merge(call: _Call) -> State:
    return _elementwise(call, gate=False)


def _gate(call: _Call) -> State:
    return _elementwise(call, gate=True)


def _last_two(call: _Call, x: Tensor, st: Spatial) -> None:
    if st.dims != (x.dim() - 2, x.dim() - 1):
        raise call.fail("its spatial axes are not the last two dimensions of its input")


def _conv(call: _Call) -> State:
    x, st = call.spatial_input()
    _last_two(call, x, st)
    weight = call.args[1]
    k = (int(weight.shape[-2]), int(weight.shape[-1]))
    s = _pair(call.arg(3, "stride", 1), 1)
    d = _pair(call.arg(5, "dilation", 1), 1)
    padding = call.arg(4, "padding", 0)
    if isinstance(padding, str):
        if padding == "valid":
            p = (0, 0)
        else:
            p = (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
    else:
        p = _pair(padding, 0)
    return _windowed(call, st, k, s, p, d)


def _windowed(
    call: _Call,
    st: Spatial,
    k: tuple[int, int],
    s: tuple[int, int],
    p: tuple[int, int],
    d: tuple[int, int],
) -> Spatial:
    out = call.outputs[0]
    n = (int(out.shape[-2]), int(out.shape[-1]))
    axes = tuple(sliding(st.axes[a], k[a], s[a], p[a], d[a], n[a]) for a in range(2))
    return Spatial((out.dim() - 2, out.dim() - 1), axes)  # type: ignore[arg-type]


def _pool_window(call: _Call) -> tuple[Spatial, tuple[int, int], tuple[int, int], tuple[int, int]]:
    """The input's geometry and a pooling call's kernel, stride (default: the kernel), padding."""
    x, st = call.spatial_input()
    _last_two(call, x, st)
    k = _pair(call.arg(1, "kernel_size"), 1)
    s = _pair(call.arg(2, "stride"), 0)
    s = k if s == (0, 0) else s
    p = _pair(call.arg(3, "padding", 0), 0)
    return st, k, s, p


def _max_pool(call: _Call) -> State:
    st, k, s, p = _pool_window(call)
    d = _pair(call.arg(4, "dilation", 1), 1)
    return _windowed(call, st, k, s, p, d)


def _avg_pool(call: _Call) -> State:
    st, k, s, p = _pool_window(call)
    return _windowed(call, st, k, s, p, (1, 1))


def _lp_pool(call: _Call) -> State:
    x, st = call.spatial_input()
    _last_two(call, x, st)
    k = _pair(call.arg(2, "kernel_size"), 1)
    s = _pair(call.arg(3, "stride"), 0)
    s = k if s == (0, 0) else s
    return _windowed(call, st, k, s, (0, 0), (1, 1))


def _adaptive(call: _Call) -> State:
    x, st = call.spatial_input()
    _last_two(call, x, st)
    out = call.outputs[0]
    axes = (adaptive(st.axes[0], int(out.shape[-2])), adaptive(st.axes[1], int(out.shape[-1])))
    return Spatial((out.dim() - 2, out.dim() - 1), axes)


def _pad(call: _Call) -> State:
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


def _reshape(call: _Call) -> State:
    x, st = call.spatial_input()
    out = call.outputs[0]
    in_shape, out_shape = list(x.shape), list(out.shape)
    in_pre = [1]
    for size in in_shape:
        in_pre.append(in_pre[-1] * size)
    out_pre = [1]
    for size in out_shape:
        out_pre.append(out_pre[-1] * size)
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


def _squeeze(call: _Call) -> State:
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


def _permutation(call: _Call) -> State:
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


def _getitem(call: _Call) -> State:
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


def _cat(call: _Call) -> State:
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


def _split(call: _Call) -> list[State | None]:
    x, st = call.spatial_input()
    position = 1 if call.name == "unbind" else 2
    dim = int(call.arg(position, "dim", 0)) % x.dim()
    if dim in st.dims:
        raise call.fail("it splits along a spatial axis")
    if call.name == "unbind":
        dims = tuple(d - (1 if d > dim else 0) for d in st.dims)
        return [Spatial(dims, st.axes) for _ in call.outputs]  # type: ignore[arg-type]
    return [st for _ in call.outputs]


def _linear(call: _Call) -> State:
    x = call.args[0]
    st = call.state(x)
    if isinstance(st, Flat) or st is None:
        return st if st is not None else Flat(((0, 0), (0, 0)))
    if x.dim() - 1 in st.dims:
        return _flat_of(st)
    return st


_REDUCTIONS = {
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


def _reduce(call: _Call) -> list[State | None] | State:
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
    def rule(call: _Call) -> State:
        x, st = call.spatial_input()
        dim = call.arg(position, "dim")
        if dim is not None and int(dim) % x.dim() in st.dims:
            raise call.fail(
                "it mixes the units of a spatial axis (softmax/normalisation "
                "along a spatial dimension)"
            )
        return _merge(call)

    return rule


def _expand(call: _Call) -> State:
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


def _copy(call: _Call) -> State | None:
    return call.state(call.args[1])


def _constant(call: _Call) -> None:
    return None


def _same(call: _Call) -> State:
    return _merge(call)


_POINTWISE = """
relu relu_ relu6 hardtanh hardtanh_ sigmoid sigmoid_ tanh tanh_ gelu silu silu_ hardswish
hardswish_ hardsigmoid hardsigmoid_ leaky_relu leaky_relu_ elu elu_ selu selu_ celu celu_
softplus mish prelu rrelu rrelu_ logsigmoid softsign tanhshrink threshold threshold_
hardshrink softshrink glu_ dropout dropout_ dropout1d dropout2d dropout3d alpha_dropout
feature_alpha_dropout feature_dropout abs abs_ neg neg_ negative exp exp_ log log_ log1p
sqrt sqrt_ rsqrt rsqrt_ square square_ pow pow_ __pow__ __rpow__ clamp clamp_ clamp_min
clamp_min_ clamp_max clamp_max_ clip clip_ sign erf sin cos reciprocal reciprocal_
contiguous clone detach detach_ to float double half bfloat16 type type_as requires_grad_
data cpu add add_ __add__ __radd__ __iadd__ sub sub_ __sub__ __rsub__ __isub__ subtract
rsub maximum minimum fmax fmin where masked_fill masked_fill_ lerp lerp_ addcmul addcdiv
batch_norm instance_norm group_norm layer_norm rms_norm local_response_norm channel_shuffle
native_channel_shuffle nan_to_num floor ceil round trunc frac __neg__ __abs__ __pos__
positive sigmoid_ logit exp2 expm1 float_power __and__ __or__ __xor__ eq ne gt lt ge le
__eq__ __ne__ __gt__ __lt__ __ge__ __le__ logical_not bitwise_not __invert__ isnan isinf
isfinite heaviside
""".split()

_GATES = """
mul mul_ __mul__ __rmul__ __imul__ multiply div div_ __truediv__ __rtruediv__ __itruediv__
true_divide divide __div__ __rdiv__ floor_divide __floordiv__ __rfloordiv__
""".split()

_UNSUPPORTED = {
    "interpolate": "it resamples the spatial grid (interpolation/upsampling)",
    "upsample": "it resamples the spatial grid (upsampling)",
    "upsample_bilinear": "it resamples the spatial grid (upsampling)",
    "upsample_nearest": "it resamples the spatial grid (upsampling)",
    "grid_sample": "it resamples the spatial grid (grid sampling)",
    "affine_grid": "it resamples the spatial grid",
    "roll": "it shifts the spatial grid cyclically (torch.roll)",
    "flip": "it flips the spatial grid",
    "fliplr": "it flips the spatial grid",
    "flipud": "it flips the spatial grid",
    "rot90": "it rotates the spatial grid",
    "pixel_shuffle": "it moves channels into the spatial grid",
    "pixel_unshuffle": "it moves the spatial grid into channels",
    "conv_transpose1d": "transposed convolutions upsample the grid",
    "conv_transpose2d": "transposed convolutions upsample the grid",
    "conv_transpose3d": "transposed convolutions upsample the grid",
    "unfold": "it rearranges spatial patches into channels",
    "fold": "it rearranges channels into spatial patches",
    "__setitem__": "in-place assignment into a spatial map",
}

RULES: dict[str, Rule] = {}
for _name in _POINTWISE:
    RULES[_name] = _same
for _name in _GATES:
    RULES[_name] = _gate
for _name in _REDUCTIONS:
    RULES[_name] = _reduce
RULES.update(
    {
        "conv2d": _conv,
        "max_pool2d": _max_pool,
        "max_pool2d_with_indices": _max_pool,
        "avg_pool2d": _avg_pool,
        "lp_pool2d": _lp_pool,
        "adaptive_avg_pool2d": _adaptive,
        "adaptive_max_pool2d": _adaptive,
        "adaptive_max_pool2d_with_indices": _adaptive,
        "pad": _pad,
        "view": _reshape,
        "reshape": _reshape,
        "view_as": _reshape,
        "reshape_as": _reshape,
        "flatten": _reshape,
        "unflatten": _reshape,
        "ravel": _reshape,
        "unsqueeze": _reshape,
        "unsqueeze_": _reshape,
        "squeeze": _squeeze,
        "squeeze_": _squeeze,
        "permute": _permutation,
        "transpose": _permutation,
        "transpose_": _permutation,
        "swapaxes": _permutation,
        "swapdims": _permutation,
        "movedim": _permutation,
        "moveaxis": _permutation,
        "t": _permutation,
        "t_": _permutation,
        "T": _permutation,
        "mT": _permutation,
        "adjoint": _permutation,
        "__getitem__": _getitem,
        "cat": _cat,
        "concat": _cat,
        "concatenate": _cat,
        "stack": _cat,
        "chunk": _split,
        "split": _split,
        "tensor_split": _split,
        "split_with_sizes": _split,
        "unbind": _split,
        "linear": _linear,
        "softmax": _along_dim(1),
        "log_softmax": _along_dim(1),
        "normalize": _along_dim(2),
        "expand": _expand,
        "expand_as": _expand,
        "broadcast_to": _expand,
        "copy_": _copy,
    }
)
for _name in (
    "zeros_like ones_like empty_like full_like rand_like randn_like randint_like "
    "new_zeros new_ones new_empty new_full new_tensor bernoulli_ uniform_ normal_ "
    "fill_ zero_ exponential_ random_ size"
).split():
    RULES[_name] = _constant


class GeometryTracer(TorchFunctionMode):
    """The torch-function mode that runs a model on meta tensors and tracks unit geometry.

    ``where()`` returns a description of the module being run, for error messages.
    """

    def __init__(self, where: Callable[[], str]) -> None:
        super().__init__()
        self._states: dict[int, State] = {}
        self._alive: list[Tensor] = []
        self._where = where
        self.current_func: Any = None

    def state(self, tensor: Tensor) -> State | None:
        return self._states.get(id(tensor))

    def set_state(self, tensor: Tensor, state: State | None) -> None:
        if state is None:
            self._states.pop(id(tensor), None)
            return
        self._states[id(tensor)] = state
        self._alive.append(tensor)

    def error(self, name: str, why: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(
            f"TheoreticalReceptiveField cannot follow `{name}` called in {self._where()}: "
            f"{why}. The receptive field would be a guess, so the analysis stops here."
        )

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        states = [
            s for s in (self.state(t) for t in _iter_tensors((args, kwargs))) if s is not None
        ]
        margs, mkwargs = _to_meta(args), _to_meta(kwargs)
        if not states:
            return func(*margs, **mkwargs)
        name = _func_name(func)
        if name in _UNSUPPORTED:
            raise self.error(name, _UNSUPPORTED[name])
        first = margs[0] if margs else None
        if name in _SHAPE_KEEPING and isinstance(first, Tensor) and first.is_meta:
            # Shape-preserving element-wise op: skip the (slow, Python) meta kernel.
            out = torch.empty_like(first)
        else:
            out = func(*margs, **mkwargs)
        outputs = list(_iter_tensors(out))
        if not outputs:
            return out
        if all(isinstance(s, Flat) for s in states) and name not in ("copy_",):
            if name in _WINDOW_OPS and any(
                int(t.shape[-1]) * int(t.shape[-2]) > 1 for t in outputs
            ):
                raise self.error(
                    name,
                    "its input lost its spatial layout earlier (a reshape "
                    "or a reduction) and is used as a spatial map again",
                )
            box = _box_union([s.box for s in states if isinstance(s, Flat)])
            result: list[State | None] = [Flat(box)] * len(outputs)
            if RULES.get(name) is _constant:
                result = [None] * len(outputs)
        else:
            rule = RULES.get(name)
            if rule is None:
                raise self.error(name, "this operation has no receptive-field rule")
            call = _Call(self, name, margs, mkwargs, out)
            self.current_func = func
            produced = rule(call)
            result = produced if isinstance(produced, list) else [produced] * len(outputs)
        for tensor, state in zip(outputs, result, strict=True):
            self.set_state(tensor, state)
        return out


_SHAPE_KEEPING = set(
    """
relu relu_ relu6 hardtanh hardtanh_ sigmoid sigmoid_ tanh tanh_ gelu silu silu_ hardswish
hardswish_ hardsigmoid hardsigmoid_ leaky_relu leaky_relu_ elu elu_ selu selu_ celu celu_
softplus mish dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
batch_norm instance_norm group_norm layer_norm local_response_norm
""".split()
)

_WINDOW_OPS = {"conv2d", "max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "lp_pool2d", "pad"}


def entry_values(state: Spatial) -> tuple[Any, ...]:
    """``(size, stride, padding)`` pairs of a spatial state (None where not affine)."""
    fh, fw = state.axes[0].affine, state.axes[1].affine
    if fh is None or fw is None:
        return (None, None, None)
    return ((fh.size, fw.size), (fh.jump, fw.jump), (fh.padding, fw.padding))
