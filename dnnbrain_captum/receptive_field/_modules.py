"""Receptive-field rules for whole attention modules.

Inside an attention module the grid is cut into windows or flattened into a sequence, every
token is mixed with the tokens it attends to, and the grid is put back together; following
that operation by operation would lose the grid. These modules are instead analysed as one
step: a unit of the output sees the union of what the units it attends to saw (Vaswani et al.
2017; Liu et al. 2021; Tu et al. 2022). The module's own computation still runs on shape-only
tensors (for its output shape) but is not traced.

* ``nn.MultiheadAttention`` without masks (torchvision's ViT): global attention, every token
  sees every token of the key/value sequence.
* torchvision's ``ShiftedWindowAttention`` / ``ShiftedWindowAttentionV2`` (Swin): each token
  sees the tokens of its window; in a shifted block, only those of its window that lie in the
  same region of the rolled map (torchvision adds -100 to the other logits, a weight below
  ``e**-100``, which the analysis counts as zero: that is the masking the architecture means).
* torchvision's ``PartitionAttentionLayer`` (MaxViT): block attention sees its
  ``partition_size`` x ``partition_size`` window, grid attention the units that share its
  position inside the grid's cells (rows ``i mod g``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from dnnbrain_captum.receptive_field._states import (
    Affine,
    Axis,
    Flat,
    Spatial,
    State,
    Tokens,
    _box_union,
    _flat_of,
    grouped,
)

__all__ = ["ModuleRule", "module_rule"]

# rule(module, inputs, kwargs, output, state_of, fail) -> the state of every output tensor
ModuleRule = Callable[..., list[State | None]]


def _box_axis(axis: Axis, lo: int, hi: int) -> Axis:
    """Every unit of ``axis`` widened by the interval [lo, hi) (empty when lo >= hi).

    When every unit then sees exactly [lo, hi) (global attention), the affine form says so:
    size ``hi - lo``, jump 0.
    """
    if lo >= hi:
        return axis
    new_lo, new_hi = axis.lo.clamp(max=lo), axis.hi.clamp(min=hi)
    same = bool((new_lo == lo).all()) and bool((new_hi == hi).all())
    return Axis(new_lo, new_hi, Affine(hi - lo, 0, -lo) if same else None)


def _global_attention(
    module: nn.Module,
    inputs: tuple[Any, ...],
    kwargs: dict[str, Any],
    outputs: list[Tensor],
    state_of: Any,
    fail: Any,
) -> list[State | None]:
    for name in ("key_padding_mask", "attn_mask"):
        if kwargs.get(name) is not None:
            raise fail(f"it is called with {name}: which tokens a query sees depends on the mask")
    if kwargs.get("is_causal") or len(inputs) > 3:
        raise fail("it is called with masks or causal attention")
    query = inputs[0]
    sequence = [
        state_of(t)
        for t in (*inputs[:3], kwargs.get("key"), kwargs.get("value"))
        if isinstance(t, Tensor)
    ]
    boxes = [_flat_of(s).box for s in sequence if s is not None]
    seen = _box_union(boxes)
    state = state_of(query)
    first: State
    if isinstance(state, Tokens):
        if state.dim != (1 if getattr(module, "batch_first", False) else 0):
            raise fail("its query holds the tokens on an unexpected axis")
        axes = (_box_axis(state.axes[0], *seen[0]), _box_axis(state.axes[1], *seen[1]))
        prefix = tuple(_box_union([p, seen]) for p in state.prefix)
        first = Tokens(state.dim, axes, prefix)
    else:
        first = Flat(seen)
    return [first] + [Flat(seen) for _ in outputs[1:]]


def _window_keys(n: int, window: int, shift: int) -> Tensor:
    """Group key of every unit of a Swin axis: its window (and region, when shifted)."""
    padded = -(-n // window) * window
    if window >= padded:
        shift = 0
    rolled = (torch.arange(n) - shift).remainder(padded)  # position after torch.roll(-shift)
    region = torch.zeros(n, dtype=torch.long)
    if shift > 0:
        region = (rolled >= padded - window).long() + (rolled >= padded - shift).long()
    return (rolled // window) * 3 + region


def _swin_attention(
    module: nn.Module,
    inputs: tuple[Any, ...],
    kwargs: dict[str, Any],
    outputs: list[Tensor],
    state_of: Any,
    fail: Any,
) -> list[State | None]:
    x = inputs[0]
    state = state_of(x)
    if not isinstance(state, Spatial) or x.dim() != 4 or state.dims != (1, 2):
        raise fail("its input is not an (N, H, W, C) map")
    window, shift = list(module.window_size), list(module.shift_size)
    if sum(shift) == 0:
        shift = [0, 0]
    axes = tuple(
        grouped(state.axes[a], _window_keys(state.axes[a].n, int(window[a]), int(shift[a])))
        for a in range(2)
    )
    return [Spatial(state.dims, axes)]  # type: ignore[arg-type]


def _partition_attention(
    module: nn.Module,
    inputs: tuple[Any, ...],
    kwargs: dict[str, Any],
    outputs: list[Tensor],
    state_of: Any,
    fail: Any,
) -> list[State | None]:
    x = inputs[0]
    state = state_of(x)
    if not isinstance(state, Spatial) or x.dim() != 4 or state.dims != (2, 3):
        raise fail("its input is not an (N, C, H, W) map")
    p = int(module.p)
    keys = []
    for a in range(2):
        n = state.axes[a].n
        if n % p:
            raise fail(f"its map size {n} is not divisible by its partition size {p}")
        units = torch.arange(n)
        keys.append(units // p if module.partition_type == "window" else units % p)
    axes = (grouped(state.axes[0], keys[0]), grouped(state.axes[1], keys[1]))
    return [Spatial(state.dims, axes)]


def _torchvision_rules() -> dict[type, ModuleRule]:
    rules: dict[type, ModuleRule] = {nn.MultiheadAttention: _global_attention}
    try:
        from torchvision.models import maxvit, swin_transformer
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return rules
    rules[swin_transformer.ShiftedWindowAttention] = _swin_attention
    rules[swin_transformer.ShiftedWindowAttentionV2] = _swin_attention
    rules[maxvit.PartitionAttentionLayer] = _partition_attention
    return rules


_RULES: dict[type, ModuleRule] | None = None


def module_rule(module: nn.Module) -> ModuleRule | None:
    """The rule analysing ``module`` as one step, or None to trace its operations."""
    global _RULES
    if _RULES is None:
        _RULES = _torchvision_rules()
    return _RULES.get(type(module))
