"""The spatial geometry core: what every operation does to the H × W grid of a map.

Two parts of the package ask which units a pixel region reaches, through which operations:
the receptive-field tracer (:mod:`dnnbrain_captum.receptive_field`, per torch call on meta
tensors) and incremental occlusion (:mod:`dnnbrain_captum.attr._incremental`, per node of a
``torch.fx`` graph). Both read their geometry from this module, and only from it:

* **sliding-window operations** (:data:`WINDOW_OPS`): a registry keyed by the functional
  name the tracer sees (``"conv2d"``, ``"max_pool2d"``, ``"avg_pool2d"``, ``"lp_pool2d"``),
  with the function, its parameters, and how to read the kernel; :func:`window_of_call` and
  :func:`window_of_module` turn a call or a module into a :class:`Window` (per-axis
  :class:`Footprint`, ``ceil_mode``, padding value). :func:`register_window_op` adds an
  operation once; both clients then follow it;
* **the classification of position-wise operations** (:func:`kind_of`): element-wise value
  operations, channel-wise ones (batch norm, PReLU, channel shuffle), normalisations over the
  whole map, random ones (dropout), multiplicative gates, adaptive pools; modules map to the
  functional they call (:func:`module_op`);
* **the interval arithmetic** (:class:`Footprint`): ``taps`` (output unit → the input
  positions it reads; the receptive-field intervals) and ``reach`` (input interval → the
  output units whose window span meets it; the incremental engine's patches).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Footprint",
    "Window",
    "WindowOp",
    "WINDOW_OPS",
    "kind_of",
    "module_op",
    "op_name",
    "register_window_op",
    "unregister_window_op",
    "window_of_call",
    "window_of_module",
]


# --------------------------------------------------------------------------------------------
# Interval arithmetic along one axis
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

    def taps(self, n_out: int) -> Tensor:
        """Input positions read by each output unit, shape (n_out, kernel) (may be outside)."""
        starts = torch.arange(n_out)[:, None] * self.stride - self.padding
        return starts + torch.arange(self.kernel)[None, :] * self.dilation

    def reach(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Output units ``[lo', hi')`` whose window span meets input positions ``[lo, hi)``.

        The span runs from the first to the last tap: with dilation, a superset of the units
        that read a position of ``[lo, hi)`` (never missing one).

        Elementwise over tensors of intervals; not clamped to the output size (the caller
        knows it); an empty input interval gives ``hi' == lo'``.
        """
        first = -torch.div(
            -(lo + self.padding - (self.span - 1)), self.stride, rounding_mode="floor"
        )
        last = torch.div(hi - 1 + self.padding, self.stride, rounding_mode="floor") + 1
        return first, torch.where(hi <= lo, first, last)


IDENTITY = Footprint()


def _pair(value: Any, default: int) -> tuple[int, int]:
    """(h, w) from an int or a sequence of one or two ints (the last two of longer ones)."""
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return (default, default)
    if isinstance(value, (list, tuple)):
        return (int(value[-2]), int(value[-1])) if len(value) >= 2 else (int(value[0]),) * 2
    return (int(value), int(value))


# --------------------------------------------------------------------------------------------
# Sliding-window operations
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowOp:
    """A registered sliding-window operation on the last two axes of ``(N, C, H, W)`` maps.

    Attributes
    ----------
    name : str
        The name the torch-function tracer sees (``function.__name__``).
    function : callable
        ``function(input, *parameters)``.
    parameters : tuple of str
        Names of the parameters after the input, in positional order.
    defaults : dict
        Defaults of the parameters that have one.
    kernel : callable
        ``kernel(bound) -> int or (int, int)``: the window size from the bound parameters.
    fill : float
        Value of padding positions (0 for a convolution, ``-inf`` for max pooling).
    ceil_by_fill : bool
        Whether ``ceil_mode=True`` windows equal windows over a map padded with ``fill``.
    modules : dict
        Module types that call the function, with ``bound(module) -> dict`` of parameters.
    """

    name: str
    function: Callable[..., Any]
    parameters: tuple[str, ...]
    defaults: dict[str, Any]
    kernel: Callable[[dict[str, Any]], Any]
    fill: float = 0.0
    ceil_by_fill: bool = False
    modules: dict[type[nn.Module], Callable[[nn.Module], dict[str, Any]]] = field(
        default_factory=dict
    )

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The parameters of a call ``function(input, *args, **kwargs)`` by name."""
        bound = dict(self.defaults)
        bound.update(zip(self.parameters, args, strict=False))
        bound.update({k: v for k, v in kwargs.items() if k in self.parameters})
        return bound


@dataclass(frozen=True)
class Window:
    """The geometry of one call of a sliding-window operation."""

    op: WindowOp
    axes: tuple[Footprint, Footprint]
    ceil_mode: bool
    bound: dict[str, Any]

    @property
    def fill(self) -> float:
        """Value of the padding positions."""
        return self.op.fill

    def unpadded(self, x: Tensor) -> Tensor:
        """The operation on ``x`` already padded (no padding of its own, floor mode)."""
        bound = dict(self.bound)
        if "padding" in bound:
            bound["padding"] = 0
        if "ceil_mode" in bound:
            bound["ceil_mode"] = False
        return self.op.function(x, **bound)


WINDOW_OPS: dict[str, WindowOp] = {}
_MODULE_WINDOWS: dict[type[nn.Module], WindowOp] = {}


def register_window_op(op: WindowOp) -> None:
    """Register a sliding-window operation for the receptive-field tracer and the engine."""
    WINDOW_OPS[op.name] = op
    for module_type in op.modules:
        _MODULE_WINDOWS[module_type] = op


def unregister_window_op(name: str) -> None:
    """Remove a registered operation (and its module forms)."""
    op = WINDOW_OPS.pop(name)
    for module_type in op.modules:
        _MODULE_WINDOWS.pop(module_type, None)


def window_of_call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Window:
    """The window of ``name(input, *args[1:], **kwargs)`` (``args[0]`` is the input)."""
    op = WINDOW_OPS[name]
    return _window(op, op.bind(tuple(args[1:]), kwargs))


def window_of_module(module: nn.Module) -> Window | None:
    """The window of a module that calls a registered operation, or None."""
    op = _MODULE_WINDOWS.get(type(module))
    if op is None:
        return None
    return _window(op, op.modules[type(module)](module))


def _window(op: WindowOp, bound: dict[str, Any]) -> Window:
    k = _pair(op.kernel(bound), 1)
    s = _pair(bound.get("stride"), 0)
    s = k if s == (0, 0) else s
    d = _pair(bound.get("dilation", 1), 1)
    padding = bound.get("padding", 0)
    if padding == "valid":
        p = (0, 0)
    elif padding == "same":  # PyTorch puts the smaller half of the total padding first
        p = (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
    else:
        p = _pair(padding, 0)
    axes = tuple(Footprint(k[a], s[a], p[a], d[a]) for a in range(2))
    return Window(op, axes, bool(bound.get("ceil_mode", False)), bound)  # type: ignore[arg-type]


def _attrs(*names: str) -> Callable[[nn.Module], dict[str, Any]]:
    return lambda module: {n: getattr(module, n) for n in names}


_POOL = ("kernel_size", "stride", "padding")
register_window_op(
    WindowOp(
        "conv2d",
        F.conv2d,
        ("weight", "bias", "stride", "padding", "dilation", "groups"),
        {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1},
        lambda b: tuple(b["weight"].shape[-2:]),
        modules={nn.Conv2d: _attrs("weight", "bias", "stride", "padding", "dilation", "groups")},
    )
)
for _name, _function in (
    ("max_pool2d", F.max_pool2d),
    ("max_pool2d_with_indices", F.max_pool2d_with_indices),
):
    register_window_op(
        WindowOp(
            _name,
            _function,
            ("kernel_size", *_POOL[1:], "dilation", "ceil_mode", "return_indices"),
            {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False},
            lambda b: b["kernel_size"],
            fill=-math.inf,
            ceil_by_fill=True,
            modules={}
            if _name != "max_pool2d"
            else {nn.MaxPool2d: _attrs(*_POOL, "dilation", "ceil_mode", "return_indices")},
        )
    )
register_window_op(
    WindowOp(
        "avg_pool2d",
        F.avg_pool2d,
        (*_POOL, "ceil_mode", "count_include_pad", "divisor_override"),
        {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True},
        lambda b: b["kernel_size"],
        modules={
            nn.AvgPool2d: _attrs(*_POOL, "ceil_mode", "count_include_pad", "divisor_override")
        },
    )
)
register_window_op(
    WindowOp(
        "lp_pool2d",
        F.lp_pool2d,
        ("norm_type", "kernel_size", "stride", "ceil_mode"),
        {"stride": None, "ceil_mode": False},
        lambda b: b["kernel_size"],
        modules={nn.LPPool2d: _attrs("norm_type", "kernel_size", "stride", "ceil_mode")},
    )
)


# --------------------------------------------------------------------------------------------
# Position-wise operations (output unit (i, j) reads input unit (i, j) only)
# --------------------------------------------------------------------------------------------

# Element-wise on values: each output element reads the same element of every input.
_VALUE = """
relu relu_ relu6 hardtanh hardtanh_ sigmoid sigmoid_ tanh tanh_ gelu silu silu_ hardswish
hardswish_ hardsigmoid hardsigmoid_ leaky_relu leaky_relu_ elu elu_ selu selu_ celu celu_
softplus mish logsigmoid softsign tanhshrink threshold threshold_ hardshrink softshrink
abs abs_ neg neg_ negative exp exp_ log log_ log1p sqrt sqrt_ rsqrt rsqrt_ square square_
pow pow_ __pow__ __rpow__ clamp clamp_ clamp_min clamp_min_ clamp_max clamp_max_ clip clip_
sign erf sin cos reciprocal reciprocal_ contiguous clone detach detach_ to float double half
bfloat16 type type_as requires_grad_ data cpu add add_ __add__ __radd__ __iadd__ sub sub_
__sub__ __rsub__ __isub__ subtract rsub maximum minimum fmax fmin where masked_fill
masked_fill_ lerp lerp_ addcmul addcdiv nan_to_num floor ceil round trunc frac __neg__
__abs__ __pos__ positive logit exp2 expm1 float_power __and__ __or__ __xor__ eq ne gt lt ge
le __eq__ __ne__ __gt__ __lt__ __ge__ __le__ logical_not bitwise_not __invert__ isnan isinf
isfinite heaviside
""".split()
# Multiplicative: element-wise, or a gate broadcast over the map (squeeze-and-excitation).
_GATE = """
mul mul_ __mul__ __rmul__ __imul__ multiply div div_ __truediv__ __rtruediv__ __itruediv__
true_divide divide __div__ __rdiv__ floor_divide __floordiv__ __rfloordiv__
""".split()
# Position-wise, but each channel's value depends on the channel (or on other channels).
_CHANNEL = "batch_norm prelu glu_ channel_shuffle native_channel_shuffle local_response_norm"
# Normalised with statistics over the whole map: position-wise by the receptive-field
# convention, global for exact incremental inference.
_NORM = "instance_norm group_norm layer_norm rms_norm"
# Random in training, the identity in evaluation.
_RANDOM = """
rrelu rrelu_ dropout dropout_ dropout1d dropout2d dropout3d alpha_dropout
feature_alpha_dropout feature_dropout
"""
_ADAPTIVE = "adaptive_avg_pool2d adaptive_max_pool2d adaptive_max_pool2d_with_indices"

_KINDS: dict[str, str] = {}
for _kind, _names in (
    ("value", _VALUE),
    ("gate", _GATE),
    ("channel", _CHANNEL.split()),
    ("norm", _NORM.split()),
    ("random", _RANDOM.split()),
    ("adaptive", _ADAPTIVE.split()),
):
    _KINDS.update(dict.fromkeys(_names, _kind))

# Value operations that may return their input itself (no new storage).
SAME_STORAGE = frozenset(
    "contiguous detach detach_ to float double half bfloat16 type type_as requires_grad_ data "
    "cpu positive __pos__".split()
)

# ``torch.fx`` records Python operators as functions of the ``operator`` module.
_OPERATOR_NAMES = {
    operator.add: "add",
    operator.iadd: "__iadd__",
    operator.sub: "sub",
    operator.isub: "__isub__",
    operator.mul: "mul",
    operator.imul: "__imul__",
    operator.truediv: "div",
    operator.itruediv: "__itruediv__",
    operator.neg: "neg",
    operator.pos: "positive",
    operator.abs: "abs",
    operator.pow: "pow",
}

# Modules and the functional they call.
_MODULE_OPS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.LeakyReLU: "leaky_relu",
    nn.ELU: "elu",
    nn.SELU: "selu",
    nn.CELU: "celu",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Mish: "mish",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.Hardtanh: "hardtanh",
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Softplus: "softplus",
    nn.Softsign: "softsign",
    nn.Tanhshrink: "tanhshrink",
    nn.LogSigmoid: "logsigmoid",
    nn.Threshold: "threshold",
    nn.Hardshrink: "hardshrink",
    nn.Softshrink: "softshrink",
    nn.Identity: "identity",
    nn.Dropout: "dropout",
    nn.Dropout1d: "dropout1d",
    nn.Dropout2d: "dropout2d",
    nn.Dropout3d: "dropout3d",
    nn.AlphaDropout: "alpha_dropout",
    nn.FeatureAlphaDropout: "feature_alpha_dropout",
    nn.BatchNorm2d: "batch_norm",
    nn.PReLU: "prelu",
    nn.LocalResponseNorm: "local_response_norm",
    nn.LayerNorm: "layer_norm",
    nn.GroupNorm: "group_norm",
    nn.InstanceNorm2d: "instance_norm",
    nn.AdaptiveAvgPool2d: "adaptive_avg_pool2d",
    nn.AdaptiveMaxPool2d: "adaptive_max_pool2d",
    nn.Linear: "linear",
    nn.Softmax: "softmax",
}
_KINDS["identity"] = "identity"


def op_name(target: Any) -> str:
    """The tracer's name of an fx target: a method name, a function's ``__name__``."""
    if isinstance(target, str):
        return target
    if target in _OPERATOR_NAMES:
        return _OPERATOR_NAMES[target]
    return str(getattr(target, "__name__", ""))


def module_op(module: nn.Module) -> str | None:
    """The name of the functional a module computes (None: unknown module type)."""
    op = _MODULE_WINDOWS.get(type(module))
    if op is not None:
        return op.name
    return _MODULE_OPS.get(type(module))


def kind_of(name: str) -> str | None:
    """How the operation ``name`` acts on the grid.

    ``"window"`` (registered sliding window), ``"value"`` (element-wise), ``"gate"``
    (multiplicative, possibly broadcast), ``"channel"`` (position-wise, channel dependent),
    ``"norm"`` (statistics over the map), ``"random"`` (dropout-like), ``"adaptive"``,
    ``"identity"``, or None (not a position-wise or window operation).
    """
    if name in WINDOW_OPS:
        return "window"
    return _KINDS.get(name)


def names_of(*kinds: str) -> list[str]:
    """Every operation name of the given kinds (for the tracer's rule tables)."""
    return [name for name, kind in _KINDS.items() if kind in kinds]
