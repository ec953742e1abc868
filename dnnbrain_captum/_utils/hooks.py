"""Hook plumbing: every hook registered here is removed in ``finally``.

No algorithm module calls ``register_*_hook`` itself; they use the context managers and the
early-exit forward below.

Every forward pass of the caller's model goes through :func:`run_to_layer`, which runs it
under :func:`keeping_buffers`: a model in training mode updates its batch-norm statistics (and
any other buffer) during a forward pass; here it updates copies, and the caller's buffers are
put back untouched (same tensor objects, same values, same version counters). The model is
given copies of the input tensors (same memory layout), so a model that writes in place into its
input (``x.mul_(2)``) never changes the caller's batch or the images a method derives from it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from dnnbrain_captum._utils.caller import warn_at_caller

__all__ = [
    "LayerCapture",
    "guided_relu",
    "keeping_buffers",
    "removing",
    "run_to_layer",
    "warn_if_training",
    "watching_modules",
]

_WARNED_TRAINING: weakref.WeakSet[nn.Module] = weakref.WeakSet()


class _StopForward(BaseException):
    """Raised inside a hook to end the forward pass once the target layer has run.

    A ``BaseException`` so that a model whose ``forward`` catches ``Exception`` cannot swallow it.
    """


@contextmanager
def removing(handles: list[RemovableHandle]) -> Iterator[list[RemovableHandle]]:
    """Yield ``handles`` (a list the body appends to) and remove all of them on exit."""
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()
        handles.clear()


def warn_if_training(model: Any) -> None:
    """Warn once per model that it is in training mode (dropout, batch statistics).

    The warning points at the user's line (:func:`~dnnbrain_captum._utils.caller.warn_at_caller`).
    """
    if isinstance(model, nn.Module) and model.training and model not in _WARNED_TRAINING:
        _WARNED_TRAINING.add(model)
        warn_at_caller(
            f"{type(model).__name__} is in training mode: dropout and batch norm make the "
            "attributions random; call model.eval() first if that is not intended"
        )


class LayerCapture:
    """What one hooked layer produced during a forward pass.

    Attributes
    ----------
    value : Tensor or tuple of Tensor or None
        The layer's output (or its input, with ``on_input=True``), still attached to the
        autograd graph. None until the layer runs.
    """

    def __init__(
        self,
        module: nn.Module,
        on_input: bool = False,
        stop: bool = False,
    ) -> None:
        self.module = module
        self.on_input = on_input
        self.stop = stop
        self.value: Tensor | tuple[Tensor, ...] | None = None

    def register(self) -> RemovableHandle:
        """Register the hook on the module and return its handle."""
        if self.on_input:
            return self.module.register_forward_pre_hook(self._pre_hook)
        return self.module.register_forward_hook(self._hook)

    def _record(self, value: Any) -> Any:
        if self.value is not None:  # the module's first call is the one recorded
            return None
        self.value = value
        if self.stop:
            raise _StopForward
        # Downstream in-place operations must not rewrite what we keep: hand a clone on.
        if isinstance(value, Tensor):
            return value.clone()
        return None

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> Any:
        value = args[0] if len(args) == 1 else args
        replacement = self._record(value)  # a clone only for a single tensor argument
        return None if replacement is None else (replacement,)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        return self._record(output)


def _model_of(forward_func: Any) -> nn.Module | None:
    """The ``nn.Module`` behind ``forward_func`` (the module itself or a bound method of it)."""
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


@contextmanager
def keeping_buffers(forward_func: Any) -> Iterator[None]:
    """While active, a model in training mode changes only copies of its buffers.

    In training mode a forward pass updates buffers in place (batch norm's ``running_mean``,
    ``running_var`` and ``num_batches_tracked``). On entry every buffer of the model is
    replaced by a clone (buffers shared between modules stay shared); on exit the caller's
    own tensors are put back, never written to. Copying back in place instead would break
    the backward pass, which saves the buffers it used. The forward pass itself computes what
    it would have computed: in training mode batch norm normalises with the batch's statistics.

    Nothing is done when no module is in training mode, or when ``forward_func`` is a plain
    function (its modules cannot be found: wrap the model in an ``nn.Module`` instead).

    Parameters
    ----------
    forward_func : nn.Module or callable
        The model, or a bound method of it.
    """
    model = _model_of(forward_func)
    modules = list(model.modules()) if model is not None else []
    if not any(module.training for module in modules):
        yield
        return
    originals: list[tuple[nn.Module, str, Tensor]] = []
    copies: dict[int, Tensor] = {}
    for module in modules:
        for name, buffer in module._buffers.items():
            if buffer is not None:
                originals.append((module, name, buffer))
                if id(buffer) not in copies:
                    copy = buffer.detach().clone()
                    copies[id(buffer)] = copy.requires_grad_(buffer.requires_grad)
    try:
        for module, name, buffer in originals:
            module._buffers[name] = copies[id(buffer)]
        yield
    finally:
        for module, name, buffer in originals:
            module._buffers[name] = buffer


def _call(
    forward_func: Callable[..., Any], inputs: Sequence[Tensor], additional_forward_args: Any
) -> Any:
    extra: tuple[Any, ...]
    if additional_forward_args is None:
        extra = ()
    elif isinstance(additional_forward_args, tuple):
        extra = additional_forward_args
    else:
        extra = (additional_forward_args,)
    # The model gets copies: one that writes in place into its input (``x.mul_(2)``) must not
    # change the caller's batch, nor the images the occlusion windows are cut from.
    inputs = [t.clone() if isinstance(t, Tensor) else t for t in inputs]
    with keeping_buffers(forward_func):
        try:
            return forward_func(*inputs, *extra)
        except RuntimeError as err:  # torch's shape and dtype errors: say what the model got
            shapes = ", ".join(
                str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__ for t in inputs
            )
            if hasattr(err, "add_note"):  # Python >= 3.11; the error keeps its type
                err.add_note(f"(the model's forward pass failed on inputs of shape {shapes})")
            raise


def run_to_layer(
    forward_func: Callable[..., Any],
    layer: nn.Module | None,
    inputs: Sequence[Tensor],
    additional_forward_args: Any = None,
    *,
    on_input: bool = False,
    taps: Sequence[LayerCapture] = (),
) -> Any:
    """Run the forward pass only as far as ``layer`` and return what it produced.

    A forward hook on ``layer`` stores its output (or, with ``on_input=True``, its first input)
    and raises a private exception, so nothing downstream of the layer runs. Extra
    :class:`LayerCapture` objects in ``taps`` record intermediate layers on the way.

    Parameters
    ----------
    forward_func : callable
        The model or forward function.
    layer : nn.Module or None
        The layer to stop at; None runs the whole function and returns its output.
    inputs : sequence of Tensor
        Positional inputs of ``forward_func``.
    additional_forward_args : Any, optional
        Further positional arguments (a tuple, or one object).
    on_input : bool
        Return the layer's input instead of its output.
    taps : sequence of LayerCapture
        Intermediate layers to record during the same pass.

    Returns
    -------
    Tensor or tuple of Tensor
        The layer's output (or input), attached to the autograd graph when grad is enabled.
        If the layer runs several times in one pass, its first call is the one returned.

    Raises
    ------
    RuntimeError
        If the layer never runs during the forward pass.
    """
    handles: list[RemovableHandle] = []
    with removing(handles):
        for tap in taps:
            handles.append(tap.register())
        if layer is None:
            return _call(forward_func, inputs, additional_forward_args)
        capture = LayerCapture(layer, on_input=on_input, stop=True)
        handles.append(capture.register())
        try:
            _call(forward_func, inputs, additional_forward_args)
        except _StopForward:
            pass
    if capture.value is None:
        raise RuntimeError(
            f"the layer {type(layer).__name__} never ran during the forward pass; is it part "
            "of the model's forward computation?"
        )
    return capture.value


@contextmanager
def watching_modules(
    model: nn.Module,
    before: Callable[[str, nn.Module, tuple[Any, ...], dict[str, Any]], None],
    after: Callable[[str, nn.Module, Any], None],
) -> Iterator[None]:
    """Call ``before(path, module, args, kwargs)`` and ``after(path, module, output)`` around
    every submodule's forward (the root included, path ``""``) while active; hooks removed on
    exit.
    """
    handles: list[RemovableHandle] = []

    def make(path: str) -> tuple[Callable[..., None], Callable[..., None]]:
        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            before(path, module, args, kwargs)

        def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            after(path, module, output)

        return pre, post

    with removing(handles):
        for path, module in model.named_modules():
            pre, post = make(path)
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(module.register_forward_hook(post))
        yield


class _ClampNegativeGradient(torch.autograd.Function):
    """Identity forward; backward lets only positive gradients through (guided backprop)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.clamp(min=0)


@contextmanager
def guided_relu(model: Any) -> Iterator[list[int]]:
    """Apply the guided-backprop rule to every ``nn.ReLU`` module of ``model`` while active.

    The rule (Springenberg et al. 2015) passes a gradient back through a ReLU only where both
    the forward input and the incoming gradient are positive. A forward hook wraps each ReLU's
    output in an identity whose backward clamps negative gradients; the ReLU's own backward
    supplies the forward mask. In-place ReLUs work because the hook returns a new tensor.

    Yields
    ------
    list of int
        A one-element counter of ReLU calls during the block, to detect functional ReLUs.
    """
    calls = [0]

    def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        calls[0] += 1
        return _ClampNegativeGradient.apply(output)

    handles: list[RemovableHandle] = []
    with removing(handles):
        if isinstance(model, nn.Module):
            for module in model.modules():
                if isinstance(module, nn.ReLU):
                    handles.append(module.register_forward_hook(hook))
        yield calls
