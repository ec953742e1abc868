"""Geometry rules of operations that resample or rearrange the grid.

Transposed convolutions, ``F.interpolate`` (``nn.Upsample``), ``pixel_shuffle`` and
``pixel_unshuffle``, ``torch.roll`` and ``flip``: every output unit gets the exact set of input
units it reads. Interpolation weights are read from PyTorch itself (the 1-D operator applied
to a basis, in the input's dtype), so a unit that lies exactly on an input pixel (weight 0
for its neighbours) sees only that pixel, as the real computation does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dnnbrain_captum.receptive_field._rules import Call, Rule, _last_two
from dnnbrain_captum.receptive_field._states import (
    Axis,
    Spatial,
    State,
    _gather,
    _pair,
    reindexed,
    sliding,
)

__all__ = ["RESAMPLE_RULES"]


def _conv_transpose(call: Call) -> State:
    x, st = call.spatial_input()
    _last_two(call, x, st)
    weight = call.args[1]
    k = (int(weight.shape[-2]), int(weight.shape[-1]))
    s = _pair(call.arg(3, "stride", 1), 1)
    p = _pair(call.arg(4, "padding", 0), 0)
    d = _pair(call.arg(7, "dilation", 1), 1)
    out = call.outputs[0]
    axes = []
    for a in range(2):
        n_out = int(out.shape[-2 + a])
        # Output o receives input i through tap t when o = i*s - p + t*d.
        shifted = torch.arange(n_out)[:, None] + p[a] - torch.arange(k[a])[None, :] * d[a]
        valid = (shifted % s[a] == 0) & (shifted >= 0) & (shifted // s[a] < st.axes[a].n)
        axes.append(_gather(st.axes[a], shifted // s[a], valid, None))
    return Spatial((out.dim() - 2, out.dim() - 1), (axes[0], axes[1]))


def _interpolation_support(call: Call, axis: int, n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) boolean: which input units each output unit reads along ``axis``."""
    x = call.args[0]
    size = call.arg(1, "size")
    scale = call.arg(2, "scale_factor")
    kwargs: dict[str, Any] = {
        "mode": call.arg(3, "mode", "nearest"),
        "align_corners": call.arg(4, "align_corners"),
        "recompute_scale_factor": call.arg(5, "recompute_scale_factor"),
        "antialias": call.arg(6, "antialias", False),
    }
    basis = torch.eye(n_in, dtype=x.dtype).reshape(n_in, 1, n_in, 1)
    if axis == 1:
        basis = basis.transpose(2, 3)
    if size is not None:
        one = (n_out, 1) if axis == 0 else (1, n_out)
        weights = F.interpolate(basis, size=one, **kwargs)
    else:
        factor = _pair_float(scale)[axis]
        weights = F.interpolate(
            basis, scale_factor=(factor, 1.0) if axis == 0 else (1.0, factor), **kwargs
        )
    return weights.reshape(n_in, -1)[:, :n_out].T != 0


def _pair_float(value: Any) -> tuple[float, float]:
    if isinstance(value, (list, tuple)):
        return (float(value[0]), float(value[-1]))
    return (float(value), float(value))


def _interpolate(call: Call) -> State:
    x, st = call.spatial_input()
    _last_two(call, x, st)
    if x.dim() != 4:
        raise call.fail("only the interpolation of (N, C, H, W) maps is supported")
    out = call.outputs[0]
    axes = []
    for a in range(2):
        n_in, n_out = st.axes[a].n, int(out.shape[-2 + a])
        support = _interpolation_support(call, a, n_in, n_out)
        index = torch.arange(n_in)[None, :].expand(n_out, n_in)
        axes.append(_gather(st.axes[a], index, support, None))
    return Spatial((2, 3), (axes[0], axes[1]))


def _upsample_alias(mode: str, align_corners: bool | None) -> Rule:
    """``F.upsample_nearest``/``upsample_bilinear`` (size, scale_factor) as interpolate."""

    def rule(call: Call) -> State:
        call.kwargs = {
            "size": call.arg(1, "size"),
            "scale_factor": call.arg(2, "scale_factor"),
            "mode": mode,
            "align_corners": align_corners,
        }
        call.args = call.args[:1]
        return _interpolate(call)

    return rule


def _pixel_shuffle(call: Call) -> State:
    x, st = call.spatial_input()
    _last_two(call, x, st)
    r = int(call.arg(1, "upscale_factor"))
    out = call.outputs[0]
    axes = tuple(
        reindexed(st.axes[a], torch.arange(int(out.shape[-2 + a])) // r, None) for a in range(2)
    )
    return Spatial(st.dims, axes)  # type: ignore[arg-type]


def _pixel_unshuffle(call: Call) -> State:
    x, st = call.spatial_input()
    _last_two(call, x, st)
    r = int(call.arg(1, "downscale_factor"))
    out = call.outputs[0]
    axes = tuple(sliding(st.axes[a], r, r, 0, 1, int(out.shape[-2 + a])) for a in range(2))
    return Spatial(st.dims, axes)  # type: ignore[arg-type]


def _moved(call: Call, dims: list[int], index_of: Any) -> State:
    x, st = call.spatial_input()
    axes: list[Axis] = list(st.axes)
    for position, dim in enumerate(dims):
        dim = int(dim) % x.dim()
        if dim in st.dims:
            a = st.dims.index(dim)
            axes[a] = reindexed(axes[a], index_of(position, axes[a].n), None)
    return Spatial(st.dims, (axes[0], axes[1]))


def _roll(call: Call) -> State:
    shifts = call.arg(1, "shifts")
    dims = call.arg(2, "dims")
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        raise call.fail("it rolls the flattened tensor (torch.roll without dims)")
    shift_list = list(shifts) if isinstance(shifts, (list, tuple)) else [shifts]
    dim_list = list(dims) if isinstance(dims, (list, tuple)) else [dims]
    return _moved(call, dim_list, lambda k, n: (torch.arange(n) - int(shift_list[k])).remainder(n))


def _flip(call: Call) -> State:
    if call.name == "fliplr":
        dims = [1]
    elif call.name == "flipud":
        dims = [0]
    else:
        value = call.arg(1, "dims")
        dims = list(value) if isinstance(value, (list, tuple)) else [value]
    return _moved(call, dims, lambda k, n: torch.arange(n - 1, -1, -1))


RESAMPLE_RULES: dict[str, Rule] = {
    "conv_transpose2d": _conv_transpose,
    "interpolate": _interpolate,
    "upsample": _interpolate,
    "upsample_nearest": _upsample_alias("nearest", None),
    "upsample_bilinear": _upsample_alias("bilinear", True),
    "pixel_shuffle": _pixel_shuffle,
    "pixel_unshuffle": _pixel_unshuffle,
    "roll": _roll,
    "flip": _flip,
    "fliplr": _flip,
    "flipud": _flip,
}
