"""Target selection: from a layer's output to one scalar per example.

``target`` (always 0-based) is

* an ``int``: a channel of the layer's output (a neuron of a ``Linear`` output);
* a tuple ``(c, i, j)``: one unit (as many indices as the output has non-batch dimensions);
* a callable ``f(layer_output) -> Tensor of shape (N,)`` (it receives the layer's raw output,
  or what the user's ``reshape_transform`` makes of it);
* a list or 1-D tensor of length N: one channel (or unit tuple) per example.

A channel is reduced to one scalar per example by ``reduction`` ("mean", DNNBrain's default,
"max" or "sum"). With ``layer=None`` the target is Captum's target on the model output.
Channels and units are those of the layer's output in channels-first layout ``(N, C, ...)``:
other layouts are rearranged or refused (:mod:`dnnbrain_captum._utils.layouts`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dnnbrain_captum._compat import select_targets
from dnnbrain_captum._utils.hooks import LayerCapture, run_to_layer
from dnnbrain_captum._utils.layouts import ReshapeTransform, resolve_layout
from dnnbrain_captum._utils.outputs import check_model_output, check_output_target

__all__ = [
    "REDUCTIONS",
    "LayerTarget",
    "channel_maps",
    "check_reduction",
    "evaluate_target",
    "layer_output",
    "per_example_targets",
    "reduce_per_example",
    "take_examples",
    "select_layer_target",
    "select_output_target",
]

LayerTarget = int | tuple[int, ...] | Callable[[Any], Tensor] | Sequence[Any] | Tensor | None

REDUCTIONS = ("mean", "max", "sum")


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is one of :data:`REDUCTIONS`, else raise ``ValueError``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce_per_example(values: Tensor, reduction: str) -> Tensor:
    """Reduce everything but the batch dimension: (N, ...) → (N,).

    ``"mean"``, ``"max"``, ``"sum"`` (the ``reduction`` of every class) and, for the
    minimal-image searches' ``activation_criterion``, ``"median"`` (numpy's, averaging the two
    middle values), ``"L1"`` and ``"L2"`` (vector norms of the flattened map; DNNBrain's were
    matrix norms).

    Examples
    --------
    >>> reduce_per_example(torch.tensor([[[3.0, -4.0]]]), "L2")
    tensor([5.])
    """
    flat = values.reshape(values.shape[0], -1)
    if reduction == "mean":
        return flat.mean(1)
    if reduction == "max":
        return flat.amax(1)
    if reduction == "sum":
        return flat.sum(1)
    if reduction == "median":
        return flat.quantile(0.5, dim=1)
    if reduction == "L1":
        return flat.abs().sum(1)
    if reduction == "L2":
        return flat.pow(2).sum(1).sqrt()
    raise ValueError(f"reduction must be one of mean, max, sum, median, L1, L2, got {reduction!r}")


def _as_int(value: Any, what: str) -> int:
    """An index from an int, a NumPy integer or a one-element integer tensor."""
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.is_floating_point()):
        raise TypeError(f"{what} must be an integer index, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer index, got {value!r}") from None


def _check_channel(channel: int, n_channels: int) -> int:
    if not 0 <= channel < n_channels:
        raise ValueError(
            f"target channel {channel} is out of range: the layer has {n_channels} channels, "
            f"valid channels are 0..{n_channels - 1} (0-based)"
        )
    return channel


def _check_unit(unit: tuple[int, ...], shape: Sequence[int]) -> tuple[int, ...]:
    if len(unit) != len(shape):
        raise ValueError(
            f"target unit {unit} has {len(unit)} indices but the layer output has "
            f"{len(shape)} non-batch dimensions of sizes {tuple(shape)}"
        )
    for index, size in zip(unit, shape, strict=True):
        if not 0 <= index < size:
            raise ValueError(
                f"target unit {unit} lies outside the layer output of shape {tuple(shape)}"
            )
    return unit


def per_example_targets(target: Any, n: int) -> list[Any] | None:
    """The per-example list form of ``target``, or None when it is one target for all.

    Raises
    ------
    ValueError
        If a per-example list or tensor does not have one entry per example.
    """
    if isinstance(target, Tensor):
        if target.dim() == 0:
            return None
        if target.dim() != 1:
            raise ValueError(
                f"a target tensor must be 1-D with one channel per example, got shape "
                f"{tuple(target.shape)}"
            )
        entries: list[Any] = target.tolist()
    elif isinstance(target, list):
        entries = target
    else:
        return None
    if len(entries) != n:
        raise ValueError(
            f"target has {len(entries)} entries but the batch has {n} examples; give one "
            "target per example or a single int/tuple/callable"
        )
    return entries


def select_layer_target(output: Any, target: LayerTarget, reduction: str = "mean") -> Tensor:
    """One scalar per example from a layer's output.

    Parameters
    ----------
    output : Tensor of shape (N, C, ...) or (N, K)
        The layer's output (anything, for a callable target).
    target : int, tuple, callable, list or Tensor
        See the module docstring.
    reduction : {"mean", "max", "sum"}
        How a channel is reduced to one value per example.

    Returns
    -------
    Tensor of shape (N,)

    Examples
    --------
    >>> out = torch.arange(16.).view(1, 4, 2, 2)
    >>> select_layer_target(out, 1), select_layer_target(out, 1, "max")
    (tensor([5.5000]), tensor([7.]))
    >>> select_layer_target(out, (2, 1, 0))
    tensor([10.])
    """
    check_reduction(reduction)
    if callable(target) and not isinstance(target, Tensor):
        values = target(output)
        n = output.shape[0] if isinstance(output, Tensor) else None
        if (
            not isinstance(values, Tensor)
            or values.dim() != 1
            or (n is not None and len(values) != n)
        ):
            shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(
                f"a callable target must return a Tensor of shape (N,) = ({n},), got {shape}"
            )
        return values
    if not isinstance(output, Tensor):
        raise ValueError(
            "the layer returns several tensors; select what to explain with a callable target"
        )
    if target is None:
        raise ValueError("target is required when a layer is given: a channel, unit or callable")
    n = output.shape[0]
    if output.dim() < 2:
        raise ValueError(f"the layer output has shape {tuple(output.shape)}; expected (N, C, ...)")
    entries = per_example_targets(target, n)
    if entries is None:
        if isinstance(target, tuple):
            unit = _check_unit(tuple(_as_int(i, "a unit index") for i in target), output.shape[1:])
            return output[(slice(None), *unit)]
        channel = _check_channel(_as_int(target, "target"), output.shape[1])
        return reduce_per_example(output[:, channel], reduction)
    if entries and isinstance(entries[0], (tuple, list)):
        units = [
            _check_unit(tuple(_as_int(i, "a unit index") for i in e), output.shape[1:])
            for e in entries
        ]
        index = torch.tensor(units, device=output.device).T
        return output[(torch.arange(n, device=output.device), *index)]
    channels = [_check_channel(_as_int(e, "target"), output.shape[1]) for e in entries]
    index = torch.tensor(channels, device=output.device)
    return reduce_per_example(output[torch.arange(n, device=output.device), index], reduction)


def select_output_target(output: Any, target: Any) -> Tensor:
    """Captum's target selection on a model output, reduced to shape (N,).

    Raises
    ------
    TypeError
        If the model output is not one tensor (:class:`~dnnbrain_captum.SelectOutput`).
    ValueError
        If a target index is out of range, or the selection leaves more than one value per
        example (target missing or too short).
    """
    check_output_target(check_model_output(output), target)
    selected = select_targets(output, target)
    if selected.dim() > 1 and selected[0].numel() == 1:
        selected = selected.reshape(selected.shape[0])
    if selected.dim() != 1:
        raise ValueError(
            f"target={target!r} leaves shape {tuple(selected.shape)} of the model output "
            f"{tuple(output.shape)}; give a target that selects one value per example"
        )
    return selected


def _fast_channel_layer(layer: nn.Module | None, target: Any, on_input: bool) -> bool:
    """Whether only the selected channels of ``layer`` need computing (plain conv/linear).

    Not for layers with forward hooks of their own (the caller's lesion or steering hooks must
    see the real output) nor for unit or callable targets.
    """
    if on_input or layer is None or callable(target) or isinstance(target, tuple):
        return False
    if isinstance(target, list) and target and isinstance(target[0], (tuple, list)):
        return False
    if layer._forward_hooks or layer._forward_pre_hooks or _has_global_forward_hooks():
        return False
    if type(layer) is nn.Conv2d:
        return layer.groups == 1 and layer.padding_mode == "zeros"
    return type(layer) is nn.Linear


def _has_global_forward_hooks() -> bool:
    modules = nn.modules.module  # both dicts exist in every supported torch (>= 2.4)
    return bool(modules._global_forward_hooks) or bool(modules._global_forward_pre_hooks)


def _check_batch(value: Any, n: int, layer: nn.Module) -> None:
    if isinstance(value, Tensor) and (value.dim() == 0 or value.shape[0] != n):
        raise ValueError(
            f"the layer {type(layer).__name__} saw shape {tuple(value.shape)} for a batch "
            f"of {n} inputs; inputs must be batched, e.g. (N, C, H, W) for images"
        )


def _selected_channels(layer: nn.Module, x: Tensor, channels: Tensor | slice) -> Tensor:
    bias = None if layer.bias is None else layer.bias[channels]
    weight = layer.weight[channels]
    if isinstance(layer, nn.Conv2d):
        return nn.functional.conv2d(
            x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups
        )
    return nn.functional.linear(x, weight, bias)


def evaluate_target(
    forward_func: Callable[..., Any],
    layer: nn.Module | None,
    inputs: Sequence[Tensor],
    target: Any,
    reduction: str = "mean",
    additional_forward_args: Any = None,
    attribute_to_layer_input: bool = False,
    reshape_transform: ReshapeTransform | None = None,
    taps: Sequence[LayerCapture] = (),
) -> Tensor:
    """The target's value, one scalar per example, computing no more than it needs.

    The forward pass stops at ``layer``, whose output is read channels-first (through its
    layout, :mod:`dnnbrain_captum._utils.layouts`). When the layer is a plain channels-first
    ``nn.Conv2d`` or ``nn.Linear`` and the target is a channel (or one channel per example),
    only those channels of the layer are computed, from the layer's input.

    Parameters
    ----------
    forward_func : callable
        The model.
    layer : nn.Module or None
        The layer, or None for the model output (Captum target semantics).
    inputs : sequence of Tensor
        The model's inputs, batch first.
    target : int, tuple, callable, list or Tensor
        What to explain (module docstring).
    reduction : {"mean", "max", "sum"}
        Channel reduction.
    additional_forward_args : Any, optional
        Extra positional arguments of the model.
    attribute_to_layer_input : bool
        Select from the layer's input instead of its output.
    reshape_transform : callable, optional
        Maps the layer's output to ``(N, C, ...)``; by default the layout is established.
    taps : sequence of LayerCapture
        Intermediate layers to record on the way (for gradients at an internal layer).

    Returns
    -------
    Tensor of shape (N,)
        Attached to the autograd graph when gradients are enabled.
    """
    check_reduction(reduction)
    if layer is None:
        output = run_to_layer(forward_func, None, inputs, additional_forward_args, taps=taps)
        return select_output_target(output, target)
    if target is None:
        raise ValueError("target is required when a layer is given: a channel, unit or callable")
    n = inputs[0].shape[0]
    layout = resolve_layout(
        forward_func,
        layer,
        inputs,
        reshape_transform,
        attribute_to_layer_input,
        additional_forward_args,
    )
    # A Conv2d with 4-D input or a Linear with 2-D input is channels-first by definition.
    fast = not taps and _fast_channel_layer(layer, target, attribute_to_layer_input)
    if fast and layout.kind in ("channels_first", "static"):
        layer_input = run_to_layer(  # no taps here: ``fast`` needs there to be none
            forward_func, layer, inputs, additional_forward_args, on_input=True
        )
        _check_batch(layer_input, n, layer)
        if layer_input.dim() == (4 if isinstance(layer, nn.Conv2d) else 2):
            return _target_channels_only(layer, layer_input, target, reduction)
    output = run_to_layer(
        forward_func,
        layer,
        inputs,
        additional_forward_args,
        on_input=attribute_to_layer_input,
        taps=taps,
    )
    _check_batch(output, n, layer)
    if callable(target) and not isinstance(target, Tensor) and reshape_transform is None:
        return select_layer_target(output, target, reduction)  # callables see the raw output
    return select_layer_target(layout(output), target, reduction)


def layer_output(
    forward_func: Callable[..., Any],
    layer: nn.Module,
    inputs: Sequence[Tensor],
    additional_forward_args: Any = None,
    reshape_transform: ReshapeTransform | None = None,
    *,
    on_input: bool = False,
    taps: Sequence[LayerCapture] = (),
) -> Any:
    """The layer's output (or input), channels-first, from a forward pass that stops there.

    :func:`~dnnbrain_captum._utils.hooks.run_to_layer` followed by the layer's layout
    (:mod:`dnnbrain_captum._utils.layouts`): the user's ``reshape_transform``, or the
    established layout; a layout that cannot be established raises ``ValueError``.
    """
    layout = resolve_layout(
        forward_func, layer, inputs, reshape_transform, on_input, additional_forward_args
    )
    output = run_to_layer(
        forward_func, layer, inputs, additional_forward_args, on_input=on_input, taps=taps
    )
    return layout(output)


def _target_channels_only(
    layer: nn.Module, layer_input: Tensor, target: Any, reduction: str
) -> Tensor:
    n = layer_input.shape[0]
    n_channels = layer.weight.shape[0]
    entries = per_example_targets(target, n)
    if entries is None:
        entries = [target]
    channels = [_check_channel(_as_int(e, "target"), n_channels) for e in entries]
    unique = sorted(set(channels))
    if len(unique) == 1:  # one channel for the whole batch: slice views, no index tensors
        maps = _selected_channels(layer, layer_input, slice(unique[0], unique[0] + 1))
        return reduce_per_example(maps[:, 0], reduction)
    maps = _selected_channels(layer, layer_input, torch.tensor(unique, device=layer.weight.device))
    position = torch.tensor([unique.index(c) for c in channels], device=maps.device)
    return reduce_per_example(maps[torch.arange(n, device=maps.device), position], reduction)


def channel_maps(output: Tensor, target: Any) -> Tensor:
    """The selected channel's map per example: (N, C, ...) → (N, ...).

    Raises
    ------
    ValueError
        For a unit tuple or callable target (a map needs a channel), or a channel out of range.
    """
    if callable(target) and not isinstance(target, Tensor):
        raise ValueError("this method maps a channel: give target as an int or one int per example")
    if isinstance(target, tuple):
        raise ValueError(
            f"this method maps a whole channel, got the unit {target}; give the channel index"
        )
    if target is None:
        raise ValueError("target is required: the channel whose map is computed")
    n = output.shape[0]
    entries = per_example_targets(target, n)
    if entries is None:
        entries = [_as_int(target, "target")] * n
    channels = [_check_channel(_as_int(e, "target"), output.shape[1]) for e in entries]
    index = torch.tensor(channels, device=output.device)
    return output[torch.arange(n, device=output.device), index]


def take_examples(args: Any, index: Tensor, n: int) -> Any:
    """Index every batch-first tensor of ``additional_forward_args`` by example.

    Parameters
    ----------
    args : Any
        ``additional_forward_args`` as the user gave it (None, one object or a tuple).
    index : Tensor of shape (B,)
        The example each row of the new batch comes from.
    n : int
        The original batch size; only tensors whose first dimension is ``n`` are indexed.
    """
    if args is None:
        return None
    items = args if isinstance(args, tuple) else (args,)
    taken = tuple(
        a[index] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n else a for a in items
    )
    return taken if isinstance(args, tuple) else taken[0]
