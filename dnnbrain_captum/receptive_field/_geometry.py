"""Shape-only execution of a model that tracks which input pixels every unit can see.

The model runs once on a ``meta`` tensor (shapes only, no arithmetic) under a
:class:`~torch.overrides.TorchFunctionMode` that sees every torch function, tensor method and
``torch.nn.functional`` call, including the functional ones written in ``forward`` methods
(``F.relu``, ``torch.cat``, ``x + y``, ``x.view``). Each tensor that depends on the input
carries a state (:mod:`._states`); a rule per operation (:mod:`._rules`, :mod:`._shape_rules`,
:mod:`._resample`, :mod:`._tokens`) gives the state of its output, and attention modules are
analysed as one step (:mod:`._modules`) while their own operations run untraced.

An operation on an input-dependent tensor that has no rule raises
:class:`UnsupportedOperationError` naming the operation and the module that called it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from dnnbrain_captum._spatial import WINDOW_OPS, kind_of, names_of
from dnnbrain_captum.receptive_field._resample import RESAMPLE_RULES
from dnnbrain_captum.receptive_field._rules import Call, Rule, _adaptive, _gate, _pad, _window
from dnnbrain_captum.receptive_field._shape_rules import (
    REDUCTIONS,
    _along_dim,
    _cat,
    _constant,
    _copy,
    _expand,
    _getitem,
    _linear,
    _permutation,
    _reduce,
    _reshape,
    _same,
    _split,
    _squeeze,
)
from dnnbrain_captum.receptive_field._states import (
    Affine,
    Axis,
    Flat,
    Spatial,
    State,
    Tokens,
    UnsupportedOperationError,
    _box_union,
    _flat_of,
    _func_name,
    _iter_tensors,
    _to_meta,
    input_axis,
)
from dnnbrain_captum.receptive_field._tokens import SHAPE_OPS, TOKEN_RULES, token_reduce

__all__ = [
    "Affine",
    "Axis",
    "Flat",
    "GeometryTracer",
    "Spatial",
    "Tokens",
    "UnsupportedOperationError",
    "entry_values",
    "input_axis",
]


_UNSUPPORTED = {
    "grid_sample": "it resamples the spatial grid (grid sampling)",
    "affine_grid": "it resamples the spatial grid",
    "rot90": "it rotates the spatial grid",
    "conv_transpose1d": "it is a 1-D transposed convolution (only 2-D maps are analysed)",
    "conv_transpose3d": "it is a 3-D transposed convolution (only 2-D maps are analysed)",
    "unfold": "it rearranges spatial patches into channels",
    "fold": "it rearranges channels into spatial patches",
    "__setitem__": "in-place assignment into a spatial map",
}

RULES: dict[str, Rule] = {}
for _name in names_of("value", "channel", "norm", "random"):
    RULES[_name] = _same
for _name in names_of("gate"):
    RULES[_name] = _gate
for _name in names_of("adaptive"):
    RULES[_name] = _adaptive
for _name in REDUCTIONS:
    RULES[_name] = _reduce
_SPATIAL_ROLES: dict[str, Rule] = {
    "reshape": _reshape,
    "squeeze": _squeeze,
    "permutation": _permutation,
    "getitem": _getitem,
    "cat": _cat,
    "split": _split,
    "linear": _linear,
    "softmax": _along_dim(1),
    "normalize": _along_dim(2),
    "expand": _expand,
}
RULES.update({name: _SPATIAL_ROLES[role] for name, role in SHAPE_OPS.items()})
RULES.update({"pad": _pad, "copy_": _copy})
for _name in (
    "zeros_like ones_like empty_like full_like rand_like randn_like randint_like "
    "new_zeros new_ones new_empty new_full new_tensor bernoulli_ uniform_ normal_ "
    "fill_ zero_ exponential_ random_ size"
).split():
    RULES[_name] = _constant


RULES.update(RESAMPLE_RULES)

# Token sequences: the rules above for element-wise operations, the token rules for the rest.
_TOKEN_TABLE: dict[str, Rule] = {
    name: rule for name, rule in RULES.items() if rule in (_same, _gate, _copy, _constant)
}
_TOKEN_TABLE.update(TOKEN_RULES)
for _name in REDUCTIONS:
    _TOKEN_TABLE[_name] = token_reduce


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
        self.suspended = 0  # > 0 while an attention module with a module rule runs
        self.bypass = False  # True while the analysis itself computes (module rules)

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
        if self.bypass:
            return func(*args, **kwargs)
        if self.suspended:
            return func(*_to_meta(args), **_to_meta(kwargs))
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
        table = RULES
        if any(isinstance(s, Tokens) for s in states):
            table = _TOKEN_TABLE
            if name not in table:  # no token rule: the sequence is only known as a whole
                states = [_flat_of(s) for s in states]
                for t in _iter_tensors((args, kwargs)):
                    if isinstance(self.state(t), Tokens):
                        self.set_state(t, _flat_of(self.state(t)))  # type: ignore[arg-type]
                table = RULES
        if all(isinstance(s, Flat) for s in states) and name not in ("copy_",):
            if (name in _WINDOW_OPS or name in WINDOW_OPS) and any(
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
            rule = table.get(name)
            if rule is None and table is RULES and kind_of(name) == "window":
                rule = _window  # registered in the geometry core (maybe after this import)
            if rule is None:
                raise self.error(name, "this operation has no receptive-field rule")
            call = Call(self, name, margs, mkwargs, out)
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

# Grid operations other than the core's sliding windows (WINDOW_OPS).
_WINDOW_OPS = {
    "pad",
    "conv_transpose2d",
    "interpolate",
    "pixel_shuffle",
    "pixel_unshuffle",
}


def entry_values(state: Spatial) -> tuple[Any, ...]:
    """``(size, stride, padding)`` pairs of a spatial state (None where not affine)."""
    fh, fw = state.axes[0].affine, state.axes[1].affine
    if fh is None or fw is None:
        return (None, None, None)
    return ((fh.size, fw.size), (fh.jump, fw.jump), (fh.padding, fw.padding))
