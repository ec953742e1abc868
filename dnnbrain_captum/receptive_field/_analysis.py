"""One shape-only pass through a model: the geometry state of every module's output.

Used by :class:`~dnnbrain_captum.receptive_field.TheoreticalReceptiveField` (the table) and by
the layout detection of layer outputs (:mod:`dnnbrain_captum._utils.layouts`), which reads
where a layer's spatial axes are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dnnbrain_captum._utils.hooks import watching_modules
from dnnbrain_captum.receptive_field._geometry import (
    GeometryTracer,
    Spatial,
    UnsupportedOperationError,
    input_axis,
)
from dnnbrain_captum.receptive_field._modules import module_rule
from dnnbrain_captum.receptive_field._states import State, _iter_tensors

__all__ = ["Trace", "trace_model"]

_VALUE_ERRORS = (
    "item() cannot be called on meta",
    "Cannot copy out of meta",
    "data-dependent",
    "register_meta function",
    "meta tensors",
)


@dataclass
class Trace:
    """What a shape-only pass saw.

    ``calls[path]`` lists, per call of the module, ``(start order, class name, output state or
    None)``; ``stop_state`` is the state of the stop layer's output (or input).
    """

    calls: dict[str, list[tuple[int, str, State | None]]] = field(default_factory=dict)
    stop_state: State | None = None
    stopped: bool = False
    inside_attention: bool = False  # the stop layer ran inside a module analysed as one step


class _Stop(BaseException):
    """Ends the pass once the requested layer has run."""


class _Pass:
    def __init__(
        self,
        model: nn.Module,
        input_size: tuple[int, int, int],
        stop: nn.Module | None,
        on_input: bool,
    ) -> None:
        self.model, self.input_size, self.stop, self.on_input = model, input_size, stop, on_input
        self.stack: list[tuple[str, nn.Module]] = []
        self.rules: list[
            tuple[nn.Module, Callable[..., Any], tuple[Any, ...], dict[str, Any], int]
        ] = []
        self.tracer = GeometryTracer(self.where)
        self.trace = Trace()
        self.counter = 0
        self.input_axes = (input_axis(input_size[1]), input_axis(input_size[2]))

    def where(self) -> str:
        for path, module in reversed(self.stack):
            if path:
                return f"module {path!r} ({type(module).__name__})"
        return f"the forward method of {type(self.model).__name__}"

    def before(
        self, path: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.stack.append((path, module))
        self.counter += 1
        self.trace.calls.setdefault(path, []).append((self.counter, type(module).__name__, None))
        self._check_channels(path, module, args)
        if module is self.stop and self.on_input:
            first = next(iter(_iter_tensors(args)), None)
            self.trace.stop_state = self.tracer.state(first) if first is not None else None
            self.trace.stopped = True
            self.trace.inside_attention = self.tracer.suspended > 0
            raise _Stop
        if self.tracer.suspended:
            return
        rule = module_rule(module)
        if rule is not None and any(
            self.tracer.state(t) is not None for t in _iter_tensors((args, kwargs))
        ):
            self.rules.append((module, rule, args, kwargs, len(self.stack)))
            self.tracer.suspended += 1

    def after(self, path: str, module: nn.Module, output: Any) -> None:
        if self.rules and self.rules[-1][0] is module and self.rules[-1][4] == len(self.stack):
            _, rule, args, kwargs, _ = self.rules.pop()
            self.tracer.suspended -= 1
            outputs = list(_iter_tensors(output))
            self.tracer.bypass = True
            try:
                states = rule(
                    module,
                    args,
                    kwargs,
                    outputs,
                    self.tracer.state,
                    lambda why: self.tracer.error(type(module).__name__, why),
                )
            finally:
                self.tracer.bypass = False
            for tensor, state in zip(outputs, states, strict=False):
                self.tracer.set_state(tensor, state)
        self.stack.pop()
        first = next(iter(_iter_tensors(output)), None)
        state = self.tracer.state(first) if first is not None else None
        records = self.trace.calls[path]
        for k in range(len(records) - 1, -1, -1):
            if records[k][2] is None:
                records[k] = (records[k][0], records[k][1], state if state is not None else 0)
                break
        if module is self.stop:
            self.trace.stop_state = state
            self.trace.stopped = True
            self.trace.inside_attention = self.tracer.suspended > 0
            raise _Stop

    def _check_channels(self, path: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        expected = getattr(module, "in_channels", None)
        x = args[0] if args and isinstance(args[0], Tensor) else None
        if not isinstance(expected, int) or x is None or x.dim() < 3:
            return
        st = self.tracer.state(x)
        raw = (
            isinstance(st, Spatial)
            and st.axes[0] is self.input_axes[0]
            and (st.axes[1] is self.input_axes[1])
        )
        c, h, w = self.input_size
        if raw and int(x.shape[1]) == c and c != expected:
            raise ValueError(
                f"input_size={self.input_size} gives {c} input channel(s), but module {path!r} "
                f"({type(module).__name__}) expects {expected}: use input_size=({expected}, {h}, "
                f"{w})"
            )


def trace_model(
    model: nn.Module,
    input_size: tuple[int, int, int],
    stop: nn.Module | None = None,
    on_input: bool = False,
) -> Trace:
    """Run ``model`` on a shape-only batch of ``input_size`` images and record every state.

    Raises
    ------
    UnsupportedOperationError
        For an operation the analysis cannot follow, or a forward pass that reads tensor
        values (value-dependent control flow), naming the module.
    ValueError
        When ``input_size`` has the wrong number of channels for the first layer.
    """
    run = _Pass(model, input_size, stop, on_input)
    c, h, w = input_size
    dtype = next(
        (p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype()
    )
    x = torch.empty((2, c, h, w), device="meta", dtype=dtype)
    run.tracer.set_state(x, Spatial((2, 3), run.input_axes))
    with torch.no_grad(), watching_modules(model, run.before, run.after):
        try:
            with run.tracer:
                model(x)
        except _Stop:
            pass
        except (UnsupportedOperationError, ValueError):
            raise
        except Exception as err:
            message = str(err)
            if any(key in message for key in _VALUE_ERRORS):
                raise UnsupportedOperationError(
                    f"TheoreticalReceptiveField cannot analyse {run.where()}: its forward pass "
                    "reads tensor values (value-dependent control flow such as `if x.sum() > "
                    "0`, `.item()`, `float(x)`, `.tolist()` or data-dependent indexing), but the "
                    "analysis runs on shape-only tensors that hold no values. Torch said: "
                    f"{message.splitlines()[0]}"
                ) from err
            if hasattr(err, "add_note"):  # Python >= 3.11; the error keeps its type
                err.add_note(
                    f"TheoreticalReceptiveField ran the forward pass of {type(model).__name__} "
                    f"on shape-only (meta) tensors of size {input_size}; it failed in "
                    f"{run.where()}"
                )
            raise
    return run.trace
