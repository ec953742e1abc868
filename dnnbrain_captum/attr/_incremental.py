"""Exact incremental inference for occluder discrepancy maps.

An occluder changes only the units whose receptive field overlaps it, so at every layer
between the image and the target layer only a small patch of the activation differs from the
clean (unoccluded) activation. This module computes, for a batch of same-size windows, only
those patches, reading the margin each layer's kernel needs from clean activations cached
once per image (incremental inference; Nakandala, Kumar & Papakonstantinou, "Incremental and
approximate inference for faster occlusion-based deep CNN explanations", SIGMOD 2019).

The model is traced with :mod:`torch.fx`; the path from the input to the target layer must be
made of operations whose spatial footprint is known:

* ``nn.Conv2d`` (any stride, padding incl. ``"same"``, dilation, groups; zero padding mode),
* ``nn.MaxPool2d`` / ``nn.AvgPool2d`` (padding, dilation, ``ceil_mode``, ``count_include_pad``,
  ``divisor_override``) and adaptive pools that keep the size,
* element-wise activations (modules such as ``nn.ReLU``, ``nn.GELU``, ... and their functional
  or tensor-method forms), ``nn.BatchNorm2d`` in eval mode with running statistics,
  ``nn.Identity`` and dropout in eval mode, arithmetic with numbers,
* additions, subtractions, products of such paths and concatenations along channels.

Anything else raises :class:`IncrementalUnsupported` with the reason, and the caller falls
back to the full recompute. The result equals the full recompute up to floating-point
rounding (summation order inside the convolutions differs).

Every per-layer patch has the same size for all windows of a batch: the largest affected
region over all window positions, its start clamped so that it stays inside the map. A layer's
input region is the producer's clean map (padded with the op's padding value) with the
producer's patch pasted in. A stride-1 ungrouped convolution whose input patch is clearly
smaller than its output patch is instead computed as clean output + the convolution of the
input's change (zero outside the input patch), i.e. a transposed convolution of that change
with the flipped kernel, whose cost scales with the input patch.

The spatial footprint of each op (``Footprint``: kernel, stride, left padding, dilation) is
kept here: ``dnnbrain_captum.receptive_field`` derives the same geometry inside its meta-tensor
tracer but exposes no per-module function; a test checks that the affected units computed here
match its ``find_region`` boxes.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from dnnbrain_captum._utils.layers import layer_path
from dnnbrain_captum._utils.targets import per_example_targets, reduce_per_example

__all__ = ["IncrementalOcclusion", "IncrementalUnsupported"]

Channels = list[int] | None  # None: every channel


class IncrementalUnsupported(Exception):
    """The incremental path cannot evaluate this model/target; the message says why."""


# --------------------------------------------------------------------------------------------
# Per-operation footprint (kernel, stride, left padding, dilation) along one axis
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Footprint:
    """Spatial footprint of a sliding-window operation along one axis.

    Output unit ``o`` reads input positions ``o·stride − padding + t·dilation`` for
    ``t = 0 … kernel − 1`` (positions outside the input are padding).
    """

    kernel: int = 1
    stride: int = 1
    padding: int = 0
    dilation: int = 1

    @property
    def span(self) -> int:
        """Input positions between the first and last tap, inclusive."""
        return self.dilation * (self.kernel - 1) + 1


IDENTITY = Footprint()


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return int(value[0]), int(value[0])
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _footprints(
    kernel: Any, stride: Any, padding: Any, dilation: Any = 1
) -> tuple[Footprint, Footprint]:
    k, s, d = _pair(kernel), _pair(stride if stride not in (None, ()) else kernel), _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            p = (0, 0)
        else:  # "same": PyTorch puts the smaller half of the total padding first
            p = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d, strict=True))  # type: ignore[assignment]
    else:
        p = _pair(padding)
    return (Footprint(k[0], s[0], p[0], d[0]), Footprint(k[1], s[1], p[1], d[1]))


# --------------------------------------------------------------------------------------------
# Graph nodes
# --------------------------------------------------------------------------------------------


class _Node:
    """One operation on the path to the target layer."""

    name: str = ""
    inputs: tuple[int, ...] = ()
    footprint: tuple[Footprint, Footprint] | None = None  # sliding-window ops only
    fill: float = 0.0  # value of padding positions for sliding-window ops
    merge: bool = False  # several inputs combined element-wise / concatenated

    def clean(self, values: Sequence[Tensor]) -> Tensor:
        """The full output from full inputs (all channels)."""
        raise NotImplementedError

    def input_channels(self, channels: Channels, shapes: Sequence[torch.Size]) -> list[Channels]:
        """Channels of each input needed to compute ``channels`` of the output."""
        return [channels for _ in self.inputs]

    def patch(self, regions: Sequence[Tensor], channels: Channels) -> Tensor:
        """The output patch from input regions (selected channels only)."""
        return self.clean(regions)

    def macs(self, channels: Channels, out_shape: torch.Size, area: int) -> int:
        """Multiply-adds for ``area`` output positions of ``channels``."""
        return 0


class _Input(_Node):
    def clean(self, values: Sequence[Tensor]) -> Tensor:
        raise AssertionError("the input has no computation")  # pragma: no cover


class _Conv(_Node):
    def __init__(self, module: nn.Conv2d) -> None:
        if module.padding_mode != "zeros":
            raise IncrementalUnsupported(
                f"convolution with padding_mode={module.padding_mode!r} is not supported"
            )
        self.module = module
        self.footprint = _footprints(
            module.kernel_size, module.stride, module.padding, module.dilation
        )

    def clean(self, values: Sequence[Tensor]) -> Tensor:
        return self.module.forward(values[0])

    def input_channels(self, channels: Channels, shapes: Sequence[torch.Size]) -> list[Channels]:
        groups = self.module.groups
        if channels is None or groups == 1:
            return [None]
        per_out = self.module.out_channels // groups
        per_in = self.module.in_channels // groups
        needed = sorted(
            {g * per_in + t for g in {c // per_out for c in channels} for t in range(per_in)}
        )
        return [needed]

    def patch(self, regions: Sequence[Tensor], channels: Channels) -> Tensor:
        module = self.module
        weight, bias = module.weight, module.bias
        groups = module.groups
        region = regions[0]
        if channels is not None:
            index = torch.tensor(channels, dtype=torch.long, device=weight.device)
            weight = weight.index_select(0, index)
            bias = None if bias is None else bias.index_select(0, index)
            if groups > 1:
                # One group per selected channel, fed with its own group's input channels.
                needed = self.input_channels(channels, ())[0]
                assert needed is not None
                position = {c: k for k, c in enumerate(needed)}
                per_out = module.out_channels // groups
                per_in = module.in_channels // groups
                expand = [
                    position[(c // per_out) * per_in + t] for c in channels for t in range(per_in)
                ]
                region = region.index_select(
                    1, torch.tensor(expand, dtype=torch.long, device=region.device)
                )
                groups = len(channels)
            else:
                groups = 1
        return F.conv2d(region, weight, bias, module.stride, 0, module.dilation, groups)

    def macs(self, channels: Channels, out_shape: torch.Size, area: int) -> int:
        n_out = self.module.out_channels if channels is None else len(channels)
        per_in = self.module.in_channels // self.module.groups
        k = self.module.kernel_size
        return n_out * per_in * k[0] * k[1] * area


class _MaxPool(_Node):
    fill = -math.inf

    def __init__(self, module: nn.MaxPool2d) -> None:
        if module.return_indices:
            raise IncrementalUnsupported("max pooling with return_indices=True is not supported")
        self.module = module
        self.footprint = _footprints(
            module.kernel_size, module.stride, module.padding, module.dilation
        )

    def clean(self, values: Sequence[Tensor]) -> Tensor:
        return self.module.forward(values[0])

    def patch(self, regions: Sequence[Tensor], channels: Channels) -> Tensor:
        m = self.module
        stride = m.stride if m.stride not in (None, ()) else m.kernel_size
        return F.max_pool2d(regions[0], m.kernel_size, stride, 0, m.dilation, ceil_mode=False)


class _AvgPool(_Node):
    def __init__(self, module: nn.AvgPool2d) -> None:
        self.module = module
        self.footprint = _footprints(module.kernel_size, module.stride, module.padding)
        self.divisor: Tensor | None = None

    def clean(self, values: Sequence[Tensor]) -> Tensor:
        x = values[0]
        m = self.module
        # How many terms each output position divides by (set by the clean pass).
        ones = torch.ones((1, 1, *x.shape[-2:]), dtype=x.dtype, device=x.device)
        stride = m.stride if m.stride not in (None, ()) else m.kernel_size
        summed = F.avg_pool2d(
            ones, m.kernel_size, stride, m.padding, m.ceil_mode, True, divisor_override=1
        )
        self.divisor = (summed / m.forward(ones)).round()
        return m.forward(x)

    def patch(self, regions: Sequence[Tensor], channels: Channels) -> Tensor:
        raise AssertionError("handled by the engine")  # pragma: no cover

    def sum_patch(self, region: Tensor) -> Tensor:
        m = self.module
        stride = m.stride if m.stride not in (None, ()) else m.kernel_size
        return F.avg_pool2d(region, m.kernel_size, stride, 0, False, True, divisor_override=1)


class _Pointwise(_Node):
    """An element-wise function of one tensor (maybe channel dependent, like batch norm)."""

    def __init__(self, function: Callable[[Tensor, Channels], Tensor]) -> None:
        self.function = function

    def clean(self, values: Sequence[Tensor]) -> Tensor:
        return self.function(values[0], None)

    def patch(self, regions: Sequence[Tensor], channels: Channels) -> Tensor:
        return self.function(regions[0], channels)


class _Merge(_Node):
    """Several same-shape tensors combined element-wise (``+``, ``-``, ``*``, ``/``)."""

    merge = True

    def __init__(self, function: Callable[[list[Tensor]], Tensor]) -> None:
        self.function = function

    def clean(self, values: Sequence[Tensor]) -> Tensor:
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) != 1:
            raise IncrementalUnsupported(
                f"{self.name} combines tensors of different shapes {sorted(shapes)} (broadcast)"
            )
        return self.function(list(values))


class _Cat(_Node):
    """Concatenation along the channel dimension."""

    merge = True

    def clean(self, values: Sequence[Tensor]) -> Tensor:
        spatial = {tuple(v.shape[-2:]) for v in values}
        if len(spatial) != 1:
            raise IncrementalUnsupported(f"{self.name} concatenates maps of different sizes")
        return torch.cat(list(values), 1)

    def input_channels(self, channels: Channels, shapes: Sequence[torch.Size]) -> list[Channels]:
        if channels is None:
            return [None for _ in self.inputs]
        out: list[Channels] = []
        offset = 0
        for shape in shapes:
            count = shape[1]
            out.append([c - offset for c in channels if offset <= c < offset + count])
            offset += count
        return out

    def patch(self, regions: Sequence[Tensor | None], channels: Channels) -> Tensor:  # type: ignore[override]
        return torch.cat([r for r in regions if r is not None], 1)


# --------------------------------------------------------------------------------------------
# From torch.fx nodes to our nodes
# --------------------------------------------------------------------------------------------

_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Threshold,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Identity,
)
_DROPOUT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_POINTWISE_FUNCTIONS: set[Any] = {
    F.relu,
    torch.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardtanh,
    F.hardswish,
    F.hardsigmoid,
    F.softplus,
    F.softsign,
    F.sigmoid,
    torch.sigmoid,
    F.tanh,
    torch.tanh,
    torch.clamp,
    torch.abs,
    torch.neg,
    operator.neg,
}
_POINTWISE_METHODS = {
    "relu",
    "sigmoid",
    "tanh",
    "clamp",
    "clamp_min",
    "clamp_max",
    "abs",
    "neg",
    "contiguous",
    "clone",
}
_BINARY_FUNCTIONS: dict[Any, Callable[..., Tensor]] = {
    operator.add: torch.add,
    operator.iadd: torch.add,
    torch.add: torch.add,
    operator.sub: torch.sub,
    operator.isub: torch.sub,
    torch.sub: torch.sub,
    operator.mul: torch.mul,
    operator.imul: torch.mul,
    torch.mul: torch.mul,
    operator.truediv: torch.div,
    operator.itruediv: torch.div,
    torch.div: torch.div,
}
_BINARY_METHODS = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _module_pointwise(module: nn.Module) -> Callable[[Tensor, Channels], Tensor]:
    if type(module) is nn.ReLU:
        return lambda x, channels: torch.relu(x)
    if getattr(module, "inplace", False):
        return lambda x, channels: module.forward(x.clone())
    return lambda x, channels: module.forward(x)


def _batch_norm(module: nn.BatchNorm2d) -> Callable[[Tensor, Channels], Tensor]:
    def run(x: Tensor, channels: Channels) -> Tensor:
        mean, var = module.running_mean, module.running_var
        weight, bias = module.weight, module.bias
        if channels is not None:
            index = torch.tensor(channels, dtype=torch.long, device=x.device)
            mean, var = mean.index_select(0, index), var.index_select(0, index)  # type: ignore[union-attr]
            weight = None if weight is None else weight.index_select(0, index)
            bias = None if bias is None else bias.index_select(0, index)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, module.eps)

    return run


def _convert_module(module: nn.Module, name: str) -> _Node:
    kind = type(module).__name__
    if isinstance(module, nn.Conv2d):
        return _Conv(module)
    if isinstance(module, nn.MaxPool2d):
        return _MaxPool(module)
    if isinstance(module, nn.AvgPool2d):
        return _AvgPool(module)
    if isinstance(module, _DROPOUT_MODULES):
        if module.training:
            raise IncrementalUnsupported(f"{name} ({kind}) is in training mode")
        return _Pointwise(lambda x, channels: x)
    if isinstance(module, nn.BatchNorm2d):
        if module.training or module.running_mean is None or module.running_var is None:
            raise IncrementalUnsupported(
                f"{name} ({kind}) uses batch statistics (training mode or no running stats)"
            )
        return _Pointwise(_batch_norm(module))
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):

        def adaptive(x: Tensor, channels: Channels) -> Tensor:
            out = module.forward(x)
            if out.shape[-2:] != x.shape[-2:]:
                raise IncrementalUnsupported(f"{name} ({kind}) changes the map size (global op)")
            return out

        return _Pointwise(adaptive)
    if type(module) in _POINTWISE_MODULES:
        return _Pointwise(_module_pointwise(module))
    raise IncrementalUnsupported(f"{name} ({kind}) has no known spatial footprint")


def _convert_call(node: fx.Node, tensor_args: list[fx.Node]) -> _Node:
    target = node.target
    method = node.op == "call_method"
    name = str(target).rstrip("_") if method else ""
    label = f"{node.name} ({target if method else getattr(target, '__name__', target)})"
    args = node.args
    kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
    if not method and target is torch.cat:
        tensors = args[0] if args else node.kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
        if (
            dim in (1, -3)
            and isinstance(tensors, (list, tuple))
            and all(isinstance(t, fx.Node) for t in tensors)
        ):
            return _Cat()
        raise IncrementalUnsupported(f"{label}: only concatenation along channels is supported")
    plain = all(
        isinstance(a, fx.Node) or _is_number(a) or isinstance(a, bool) or a is None for a in args
    ) and all(_is_number(v) or isinstance(v, (bool, str)) or v is None for v in kwargs.values())
    if not plain:
        raise IncrementalUnsupported(f"{label} has arguments that are not numbers")
    binary = _BINARY_METHODS.get(name) if method else _BINARY_FUNCTIONS.get(target)
    if binary is not None and len(args) == 2:
        first, second = args
        if isinstance(first, fx.Node) and isinstance(second, fx.Node):
            return _Merge(lambda v, f=binary: f(v[0], v[1], **kwargs))
        if isinstance(first, fx.Node):
            return _Pointwise(lambda x, c, f=binary: f(x, second, **kwargs))
        if isinstance(second, fx.Node):
            return _Pointwise(lambda x, c, f=binary: f(first, x, **kwargs))
    if (
        len(tensor_args) == 1
        and args
        and args[0] is tensor_args[0]
        and not any(isinstance(a, fx.Node) for a in args[1:])
    ):
        rest = args[1:]
        copy = any(a is True for a in rest)  # a positional ``inplace=True``
        if not method and target in _POINTWISE_FUNCTIONS:
            return _Pointwise(
                lambda x, c, f=target: f(x.clone() if copy else x, *rest, **kwargs)  # type: ignore[operator]
            )
        if method and name in _POINTWISE_METHODS:
            return _Pointwise(lambda x, c: getattr(x, name)(*rest, **kwargs))
        if not method and target is F.dropout:
            training = node.kwargs.get("training", rest[1] if len(rest) > 1 else True)
            if training is False:
                return _Pointwise(lambda x, c: x)
            raise IncrementalUnsupported(f"{label} is active (training=True)")
    raise IncrementalUnsupported(f"{label} has no known spatial footprint")


@dataclass
class _Graph:
    nodes: list[_Node]
    target: int  # index of the target node


def analyse(model: nn.Module, layer: nn.Module) -> _Graph:
    """The operations from the input to ``layer`` in execution order.

    Raises
    ------
    IncrementalUnsupported
        With the reason, when an operation has no known spatial footprint, the model cannot be
        traced, ``layer`` is not found as one traced operation, or a module has hooks.
    """
    path = layer_path(model, layer)
    module_hooks = torch.nn.modules.module
    if getattr(module_hooks, "_global_forward_hooks", None) or getattr(
        module_hooks, "_global_forward_pre_hooks", None
    ):
        raise IncrementalUnsupported("global forward hooks are registered")
    try:
        traced = fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure means "fall back"
        raise IncrementalUnsupported(
            f"torch.fx cannot trace {type(model).__name__}: {type(error).__name__}: {error}"
        ) from None
    graph_nodes = list(traced.graph.nodes)
    placeholders = [n for n in graph_nodes if n.op == "placeholder"]
    target_node = None
    calls = [n for n in graph_nodes if n.op == "call_module" and n.target == path]
    if calls:
        target_node = calls[0]  # run_to_layer explains the layer's first call
    elif path:
        inside = [n for n in graph_nodes if path in (n.meta.get("nn_module_stack") or {})]
        members = set(inside)
        leaving = [n for n in inside if any(u not in members for u in n.users)]
        if len(leaving) == 1:
            target_node = leaving[0]
    if target_node is None:
        raise IncrementalUnsupported(f"the layer {path!r} is not one operation of the traced graph")

    # Ancestors of the target, in graph (= execution) order.
    needed: set[fx.Node] = set()
    stack = [target_node]
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        stack.extend(node.all_input_nodes)
    ordered = [n for n in graph_nodes if n in needed]
    if not placeholders or placeholders[0] not in needed:
        raise IncrementalUnsupported("the target layer does not depend on the input")
    index: dict[fx.Node, int] = {}
    nodes: list[_Node] = []
    for node in ordered:
        if node.op == "placeholder":
            if node is not placeholders[0]:
                raise IncrementalUnsupported(
                    f"the target depends on the extra model argument {node.name!r}"
                )
            converted: _Node = _Input()
            tensor_args: list[fx.Node] = []
        elif node.op == "call_module":
            module = model.get_submodule(str(node.target))
            if module._forward_hooks or module._forward_pre_hooks:
                raise IncrementalUnsupported(f"{node.target} has forward hooks")
            converted = _convert_module(module, str(node.target))
            tensor_args = list(node.all_input_nodes)
            if len(tensor_args) != 1 or node.args[0] is not tensor_args[0]:
                raise IncrementalUnsupported(f"{node.target} takes several inputs")
        elif node.op in ("call_function", "call_method"):
            tensor_args = list(node.all_input_nodes)
            converted = _convert_call(node, tensor_args)
            if isinstance(converted, _Cat):
                tensor_args = list(node.args[0] if node.args else node.kwargs["tensors"])
            elif isinstance(converted, _Merge):
                tensor_args = [a for a in node.args if isinstance(a, fx.Node)]
        else:
            raise IncrementalUnsupported(f"{node.name} ({node.op} {node.target}) is not supported")
        converted.name = str(node.target) if node.op == "call_module" else node.name
        converted.inputs = tuple(index[a] for a in tensor_args)
        index[node] = len(nodes)
        nodes.append(converted)
    return _Graph(nodes, index[target_node])


# --------------------------------------------------------------------------------------------
# Geometry: the patch of every node for every window position, per axis
# --------------------------------------------------------------------------------------------


def _floor_div(a: Tensor, b: int) -> Tensor:
    return torch.div(a, b, rounding_mode="floor")


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
    empty = axis.hi <= axis.lo
    lo = -_floor_div(-(axis.lo + fp.padding - (fp.span - 1)), fp.stride)
    hi = _floor_div(axis.hi - 1 + fp.padding, fp.stride) + 1
    hi = torch.where(empty, lo, hi)
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


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """Everything fixed for one image size, window, stride and target channel set."""

    channels: list[Channels]  # stored channels per node
    select: list[list[Tensor | None]]  # per node, per input: index into the input's channels
    axes: list[tuple[_Axis, _Axis]]
    edges: list[list[tuple[_Edge, _Edge] | None]]  # None: use the input's patch as it is
    order: list[int]  # nodes to compute per batch (not the input)
    # Convolutions computed from the change of their input (see ``_delta_conv``): node →
    # per-position offset (rows, cols) of the transposed convolution's output in the patch.
    delta: dict[int, tuple[Tensor, Tensor]]


class IncrementalOcclusion:
    """Occluded target values of a model, computed incrementally from clean activations.

    Parameters
    ----------
    model : nn.Module
        The model (traced with torch.fx).
    layer : nn.Module
        The target layer.

    Raises
    ------
    IncrementalUnsupported
        When the path to ``layer`` contains an operation without a known footprint.
    """

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        self.graph = analyse(model, layer)
        self.clean_values: list[Tensor] = []
        self._targets: list[tuple[int, tuple[int, int] | None]] = []
        self._flipped: dict[int, Tensor] = {}
        self._images = torch.empty(0)

    # -- clean pass ---------------------------------------------------------------------------
    def run_clean(self, x: Tensor) -> Tensor:
        """Run the traced path on clean images; return the target layer's output."""
        values: list[Tensor] = []
        for node in self.graph.nodes:
            if isinstance(node, _Input):
                out = x
            else:
                out = node.clean([values[i] for i in node.inputs])
            if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[0] != x.shape[0]:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise IncrementalUnsupported(
                    f"{node.name} gives {shape}, not a batch of maps (N, C, H, W)"
                )
            values.append(out)
        self.clean_values = values
        return values[self.graph.target]

    # -- plans --------------------------------------------------------------------------------
    def plan(
        self,
        target_channels: list[int],
        window: tuple[int, int],
        stride: tuple[int, int],
        grid: tuple[int, int],
    ) -> _Plan:
        """The patch geometry and channel selection for windows on the clean images' grid."""
        nodes, values = self.graph.nodes, self.clean_values
        shapes = [v.shape for v in values]
        n = len(nodes)
        # Channels: from the target backwards.
        wanted: list[set[int] | None | bool] = [False] * n  # False: not needed yet
        wanted[self.graph.target] = set(target_channels)
        for k in range(n - 1, -1, -1):
            if wanted[k] is False:
                continue
            mine = wanted[k]
            channels = None if mine is None else sorted(mine)  # type: ignore[arg-type]
            needs = nodes[k].input_channels(channels, [shapes[i] for i in nodes[k].inputs])
            for i, need in zip(nodes[k].inputs, needs, strict=True):
                if need is not None and not need:
                    continue  # none of this input's channels is needed (concatenation)
                if need is None or wanted[i] is None:
                    wanted[i] = None
                elif wanted[i] is False:
                    wanted[i] = set(need)
                else:
                    wanted[i] = wanted[i] | set(need)  # type: ignore[operator]
        stored: list[Channels] = [
            None if w is None or w is False else sorted(w)  # type: ignore[arg-type]
            for w in wanted
        ]
        select: list[list[Tensor | None]] = []
        for k, node in enumerate(nodes):
            needs = node.input_channels(stored[k], [shapes[i] for i in node.inputs])
            row: list[Tensor | None] = []
            for i, need in zip(node.inputs, needs, strict=True):
                have = stored[i]
                if need is not None and not need:
                    row.append(torch.empty(0, dtype=torch.long, device=values[i].device))
                    continue
                if need is None or (
                    have is None and len(need) == shapes[i][1] and need == list(range(shapes[i][1]))
                ):
                    row.append(None)
                elif have is None:
                    row.append(torch.tensor(need, dtype=torch.long, device=values[i].device))
                else:
                    where = {c: p for p, c in enumerate(have)}
                    positions = [where[c] for c in need]
                    row.append(
                        None
                        if positions == list(range(len(have)))
                        else torch.tensor(positions, dtype=torch.long, device=values[i].device)
                    )
            select.append(row)
        # Geometry, per axis.
        axes: list[tuple[_Axis, _Axis]] = []
        edges: list[list[tuple[_Edge, _Edge] | None]] = []
        for k, node in enumerate(nodes):
            size = (shapes[k][-2], shapes[k][-1])
            if isinstance(node, _Input):
                per_axis = []
                for a in range(2):
                    lo = torch.arange(grid[a]) * stride[a]
                    per_axis.append(_Axis(lo, lo + window[a], window[a], lo.clone()))
                axes.append((per_axis[0], per_axis[1]))
                edges.append([])
                continue
            fp = node.footprint or (IDENTITY, IDENTITY)
            if node.footprint is not None:
                mine = tuple(_through(axes[node.inputs[0]][a], fp[a], size[a]) for a in range(2))
            elif node.merge:
                mine = tuple(_union([axes[i][a] for i in node.inputs], size[a]) for a in range(2))
            else:
                mine = axes[node.inputs[0]]
            axes.append(mine)  # type: ignore[arg-type]
            row_edges: list[tuple[_Edge, _Edge] | None] = []
            for i in node.inputs:
                theirs = axes[i]
                if node.footprint is None and all(
                    theirs[a] is mine[a]
                    or (
                        theirs[a].length == mine[a].length
                        and torch.equal(theirs[a].start, mine[a].start)
                    )
                    for a in range(2)
                ):
                    row_edges.append(None)
                else:
                    row_edges.append(
                        (
                            _edge(mine[0], theirs[0], fp[0], shapes[i][-2]),
                            _edge(mine[1], theirs[1], fp[1], shapes[i][-1]),
                        )
                    )
            edges.append(row_edges)
        order = [k for k in range(n) if not isinstance(nodes[k], _Input) and wanted[k] is not False]
        delta: dict[int, tuple[Tensor, Tensor]] = {}
        for k in order:
            node = nodes[k]
            if not isinstance(node, _Conv) or not self._delta_pays(node, k, stored, select, axes):
                continue
            i = node.inputs[0]
            fp = node.footprint
            assert fp is not None
            delta[k] = tuple(  # type: ignore[assignment]
                axes[k][a].start - fp[a].padding - axes[i][a].start + (fp[a].span - 1)
                for a in range(2)
            )
            edges[k] = [None]
        return _Plan(stored, select, axes, edges, order, delta)

    def _delta_pays(
        self,
        node: _Conv,
        k: int,
        stored: list[Channels],
        select: list[list[Tensor | None]],
        axes: list[tuple[_Axis, _Axis]],
    ) -> bool:
        """Whether a convolution is cheaper from its input's change (a transposed conv).

        Its output patch = clean output + conv(new input patch − clean input patch); the
        change is zero outside the input patch, so the multiply-adds scale with the input
        patch's area instead of the output patch's. Used for stride-1, ungrouped
        convolutions computing all channels when the input patch is clearly smaller (the
        transposed convolution runs at a lower rate per multiply-add).
        """
        module = node.module
        i = node.inputs[0]
        if tuple(module.stride) != (1, 1) or module.groups != 1:
            return False
        if stored[k] is not None or stored[i] is not None or select[k][0] is not None:
            return False
        area_in = axes[i][0].length * axes[i][1].length
        area_out = axes[k][0].length * axes[k][1].length
        return 1.5 * area_in < area_out

    # -- per image ----------------------------------------------------------------------------
    def _padded_clean(self, plan: _Plan) -> dict[tuple[int, int], Tensor]:
        """Clean producer maps, channel-selected, padded, flattened channels-last."""
        padded: dict[tuple[int, int], Tensor] = {}
        nodes = self.graph.nodes
        for k in plan.delta:
            for key, m in ((-1, nodes[k].inputs[0]), (-2, k)):
                clean = self.clean_values[m][0]
                padded[(k, key)] = clean.permute(1, 2, 0).reshape(-1, clean.shape[0])
        for k in plan.order:
            node = nodes[k]
            for slot, i in enumerate(node.inputs):
                pair_ = plan.edges[k][slot]
                if pair_ is None:
                    continue
                clean = self.clean_values[i][0]
                have = plan.channels[i]
                if have is not None:
                    clean = clean.index_select(
                        0, torch.tensor(have, dtype=torch.long, device=clean.device)
                    )
                sel = plan.select[k][slot]
                if sel is not None and sel.numel() == 0:
                    continue
                if sel is not None:
                    clean = clean.index_select(0, sel)
                er, ec = pair_
                clean = F.pad(
                    clean,
                    (ec.pad_before, ec.pad_after, er.pad_before, er.pad_after),
                    value=node.fill,
                )
                padded[(k, slot)] = clean.permute(1, 2, 0).reshape(-1, clean.shape[0])
        return padded

    def occluded(
        self,
        plan: _Plan,
        rows: Tensor,
        cols: Tensor,
        fill: Tensor,
        padded: dict[tuple[int, int], Tensor],
    ) -> Tensor:
        """Target layer output patch for the windows at grid (rows, cols) of one image.

        Returns the patch of the target node, shape (B, C_target, L_h, L_w).
        """
        nodes = self.graph.nodes
        device = fill.device
        patches: dict[int, Tensor] = {}
        # The input patch: the occluder's content in each window.
        ax0, ax1 = plan.axes[0]
        r0 = ax0.start.to(device)[rows]
        c0 = ax1.start.to(device)[cols]
        ar_h = torch.arange(ax0.length, device=device)
        ar_w = torch.arange(ax1.length, device=device)
        in_patch = fill[:, (r0[:, None] + ar_h)[:, :, None], (c0[:, None] + ar_w)[:, None, :]]
        in_patch = in_patch.permute(1, 0, 2, 3)  # (B, C, h, w)
        if plan.channels[0] is not None:
            in_patch = in_patch.index_select(
                1, torch.tensor(plan.channels[0], dtype=torch.long, device=device)
            )
        patches[0] = in_patch
        for k in plan.order:
            node = nodes[k]
            regions = []
            for slot, i in enumerate(node.inputs):
                sel = plan.select[k][slot]
                if sel is not None and sel.numel() == 0:
                    regions.append(None)
                    continue
                source = patches[i]
                if sel is not None:
                    source = source.index_select(1, sel)
                pair_ = plan.edges[k][slot]
                if pair_ is None:
                    regions.append(source)
                    continue
                regions.append(self._region(pair_, source, padded[(k, slot)], rows, cols))
            if k in plan.delta:
                patches[k] = self._delta_conv(plan, k, regions[0], rows, cols, padded)
            elif isinstance(node, _AvgPool):
                assert node.divisor is not None
                ah, aw = plan.axes[k]
                rr = ah.start.to(device)[rows][:, None] + torch.arange(ah.length, device=device)
                cc = aw.start.to(device)[cols][:, None] + torch.arange(aw.length, device=device)
                divisor = node.divisor[0, 0][rr[:, :, None], cc[:, None, :]]
                patches[k] = node.sum_patch(regions[0]) / divisor[:, None]
            else:
                patches[k] = node.patch(regions, plan.channels[k])
        return patches[self.graph.target]

    def _delta_conv(
        self,
        plan: _Plan,
        k: int,
        source: Tensor,
        rows: Tensor,
        cols: Tensor,
        padded: dict[tuple[int, int], Tensor],
    ) -> Tensor:
        """Output patch of convolution ``k`` as clean output + conv(input patch − clean).

        The convolution of the change, which is zero outside the input patch, is the
        transposed convolution of the change with the flipped kernel; its output covers the
        input patch widened by the kernel's span, and is added where it meets the patch.
        """
        node = self.graph.nodes[k]
        assert isinstance(node, _Conv)
        i = node.inputs[0]
        device = source.device
        b, c_in, lih, liw = source.shape
        clean_in = padded[(k, -1)][
            _patch_index(plan.axes[i], rows, cols, self.clean_values[i].shape[-1], device)
        ]
        change = source - clean_in.view(b, lih, liw, c_in).permute(0, 3, 1, 2)
        if k not in self._flipped:
            self._flipped[k] = node.module.weight.flip(-1, -2).transpose(0, 1).contiguous()
        grown = F.conv_transpose2d(change, self._flipped[k], None, 1, 0, 0, 1, node.module.dilation)
        c_out, gh, gw = grown.shape[1:]
        loh, low = plan.axes[k][0].length, plan.axes[k][1].length
        size = b * loh * low
        index = _patch_index(plan.axes[k], rows, cols, self.clean_values[k].shape[-1], device)
        out = padded[(k, -2)][torch.cat([index, index[:1]])]  # spare row for the overflow
        shift_r, shift_c = plan.delta[k]
        dest_r = torch.arange(gh, device=device) - shift_r.to(device)[rows][:, None]
        dest_c = torch.arange(gw, device=device) - shift_c.to(device)[cols][:, None]
        inside = ((dest_r >= 0) & (dest_r < loh))[:, :, None] & ((dest_c >= 0) & (dest_c < low))[
            :, None, :
        ]
        dest = (
            torch.arange(b, device=device)[:, None, None] * (loh * low)
            + dest_r[:, :, None] * low
            + dest_c[:, None, :]
        )
        dest = torch.where(inside, dest, size).reshape(-1)
        out.index_add_(0, dest, grown.permute(0, 2, 3, 1).reshape(-1, c_out))
        return out[:size].view(b, loh, low, c_out).permute(0, 3, 1, 2)

    @staticmethod
    def _region(
        pair_: tuple[_Edge, _Edge],
        patch: Tensor,
        padded: Tensor,
        rows: Tensor,
        cols: Tensor,
    ) -> Tensor:
        """Producer values over the consumer's input region: clean, with the patch pasted.

        ``padded`` is the producer's clean map, padded and flattened channels-last
        (H_p·W_p, C). Returns (B, C, need_h, need_w), channels-last in memory.
        """
        er, ec = pair_
        device = patch.device
        b, channels, lh, lw = patch.shape
        nh, nw = er.need, ec.need
        size = b * nh * nw
        width = ec.pad_before + ec.size + ec.pad_after
        top = er.first.to(device)[rows] + er.pad_before
        left = ec.first.to(device)[cols] + ec.pad_before
        flat = (
            (top[:, None] + torch.arange(nh, device=device))[:, :, None] * width
            + (left[:, None] + torch.arange(nw, device=device))[:, None, :]
        ).reshape(-1)
        # One spare row at the end receives the patch values that fall outside the region.
        region = padded[torch.cat([flat, flat[:1]])]
        place_r = er.place.to(device)[rows][:, None] + torch.arange(lh, device=device)
        place_c = ec.place.to(device)[cols][:, None] + torch.arange(lw, device=device)
        inside = ((place_r >= 0) & (place_r < nh))[:, :, None] & ((place_c >= 0) & (place_c < nw))[
            :, None, :
        ]
        dest = (
            torch.arange(b, device=device)[:, None, None] * (nh * nw)
            + place_r[:, :, None] * nw
            + place_c[:, None, :]
        )
        dest = torch.where(inside, dest, size).reshape(-1)
        region.index_copy_(0, dest, patch.permute(0, 2, 3, 1).reshape(-1, channels))
        return region[:size].view(b, nh, nw, channels).permute(0, 3, 1, 2)

    # -- the whole map ------------------------------------------------------------------------
    def clean_targets(self, x: Tensor, target: Any, reduction: str) -> Tensor:
        """The target's clean value per image, shape (N,); remembers the images.

        The clean pass runs one image at a time (and again per image in
        :meth:`occluded_values`), so that only one image's activations are held at once.
        """
        n = x.shape[0]
        entries = per_example_targets(target, n)
        values = []
        self._targets = []
        for k in range(n):
            target_map = self.run_clean(x[k : k + 1])
            entry = entries[k] if entries is not None else target
            channel, unit = _target_of(entry, target_map.shape[1:])
            self._targets.append((channel, unit))
            values.append(_reduce_maps(target_map[0, channel][None], reduction, unit))
        self._images = x
        return torch.cat(values)

    def occluded_values(
        self,
        fill: Tensor,
        reduction: str,
        window: tuple[int, int],
        stride: tuple[int, int],
        grid: tuple[int, int],
        batch: int,
        positions: Tensor | None = None,
    ) -> Iterator[Tensor]:
        """Occluded target values, one tensor per batch of windows, image after image.

        Call :meth:`clean_targets` first. ``fill`` is the occluder content (N or 1, C, H, W);
        ``positions`` optionally restricts the windows (flat row-major grid indices, the same
        for every image; used by benchmarks).
        """
        device = self._images.device
        plans: dict[int, _Plan] = {}
        if positions is None:
            positions = torch.arange(grid[0] * grid[1], device=device)
        for image, (channel, unit) in enumerate(self._targets):
            target_map = self.run_clean(self._images[image : image + 1])
            if channel not in plans:
                plans[channel] = self.plan([channel], window, stride, grid)
            plan = plans[channel]
            clean_map = target_map[0, channel]
            fill_image = fill[image if fill.shape[0] > 1 else 0].expand(
                self.clean_values[0].shape[1:]
            )
            padded = self._padded_clean(plan)
            ah, aw = plan.axes[self.graph.target]
            start_r, start_c = ah.start.to(device), aw.start.to(device)
            ar_h = torch.arange(ah.length, device=device)
            ar_w = torch.arange(aw.length, device=device)
            height, width = clean_map.shape
            flat_clean = clean_map.reshape(-1)
            for begin in range(0, len(positions), batch):
                index = positions[begin : begin + batch]
                rows, cols = index // grid[1], index % grid[1]
                patch = self.occluded(plan, rows, cols, fill_image, padded)[:, 0]
                b = patch.shape[0]
                rr = start_r[rows][:, None] + ar_h
                cc = start_c[cols][:, None] + ar_w
                spots = (rr[:, :, None] * width + cc[:, None, :]).reshape(b, -1)
                maps = flat_clean.expand(b, -1).clone()
                maps.scatter_(1, spots, patch.reshape(b, -1))
                yield _reduce_maps(maps.view(b, height, width), reduction, unit)

    # -- arithmetic ---------------------------------------------------------------------------
    def macs_per_window(self, plan: _Plan) -> tuple[int, int]:
        """Multiply-adds per window: (incremental patches, full maps with the same channels)."""
        incremental = full = 0
        for k in plan.order:
            node = self.graph.nodes[k]
            shape = self.clean_values[k].shape
            ah, aw = plan.axes[node.inputs[0] if k in plan.delta else k]
            incremental += node.macs(plan.channels[k], shape, ah.length * aw.length)
            full += node.macs(plan.channels[k], shape, shape[-2] * shape[-1])
        return incremental, full


def _patch_index(
    axes: tuple[_Axis, _Axis], rows: Tensor, cols: Tensor, width: int, device: torch.device
) -> Tensor:
    """Flat (row-major) positions of the patches of windows (rows, cols) in a map."""
    ah, aw = axes
    top = ah.start.to(device)[rows][:, None] + torch.arange(ah.length, device=device)
    left = aw.start.to(device)[cols][:, None] + torch.arange(aw.length, device=device)
    return (top[:, :, None] * width + left[:, None, :]).reshape(-1)


def _target_of(entry: Any, shape: torch.Size) -> tuple[int, tuple[int, int] | None]:
    """(channel, unit position or None) of one example's target; validated by the caller."""
    if isinstance(entry, (tuple, list)):
        if len(entry) != 3:
            raise IncrementalUnsupported(f"target {entry!r} is not a (c, i, j) unit")
        c, i, j = (int(v) for v in entry)
        return c, (i, j)
    if isinstance(entry, Tensor):
        entry = int(entry.item())
    return int(entry), None


def _reduce_maps(maps: Tensor, reduction: str, unit: tuple[int, int] | None) -> Tensor:
    if unit is not None:
        return maps[:, unit[0], unit[1]]
    return reduce_per_example(maps, reduction)
