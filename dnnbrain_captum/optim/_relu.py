"""Redirected ReLU gradients for activation maximisation (Olah et al. 2017, Lucid).

A unit behind a ReLU that is off for every position of an image passes no gradient back, so an
optimisation that starts where a channel is silent never moves. While active,
:func:`redirected_relu` gives every ``nn.ReLU`` of a model this backward rule, per example:
the ordinary ReLU gradient, unless it is zero everywhere for that example; then the incoming
gradient passes through, except where it would push an already negative input further down.
Forward values are unchanged.

A target read *after* a ReLU layer has the same problem at the target itself: a channel that is
off everywhere has a zero gradient, and the redirected gradient pushes every position's
pre-activation up at once. :func:`rectified_objective` gives such an example a surrogate
objective instead, used only while the true rectified value is exactly 0: a soft maximum
``τ·log Σ exp(z/τ)`` of all its units' pre-activations z, which climbs the units closest to
firing and pulls up the runners-up too, so the climb is not stuck on one unit that cannot fire.
The temperature τ falls geometrically from 0.3 to 0.01 over the steps (:func:`temperature`): a
soft start that spreads the climb, a near-hard maximum at the end that pushes the best unit
over 0. The value reported is always the true one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

from dnnbrain_captum._utils.hooks import removing
from dnnbrain_captum._utils.targets import select_layer_target

__all__ = [
    "TEMPERATURE_END",
    "TEMPERATURE_START",
    "output_hooked",
    "rectified_objective",
    "redirected_relu",
    "soft_maximum",
    "temperature",
]

#: Temperatures τ of the surrogate's soft maximum at the first and the last step, in the layer's
#: activation units (issue 15, measured on the digits CNN's 53 data-silent conv1–conv5 ReLU
#: channels, benchmarks/README.md: a constant τ = 0.5 plus the hard maximum fired 34 of them
#: from grey and from noise; this schedule, with the silent images seen untransformed and the
#: extra searches of :mod:`._ignite`, fires 45).
TEMPERATURE_START = 0.3
TEMPERATURE_END = 0.01


def temperature(step: int, steps: int) -> float:
    """τ at ``step`` of ``steps``: geometric from :data:`TEMPERATURE_START` to the end value.

    Examples
    --------
    >>> temperature(0, 5), round(temperature(4, 5), 6), temperature(0, 1)
    (0.3, 0.01, 0.3)
    """
    fraction = step / max(steps - 1, 1)
    return TEMPERATURE_START * (TEMPERATURE_END / TEMPERATURE_START) ** fraction


class _RedirectedReLU(torch.autograd.Function):
    """``relu(x)`` whose backward redirects the gradient of examples with no active unit."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, shown: Tensor | None) -> Tensor:
        """``shown`` (the module's output as the caller's hooks left it) or else ``relu(x)``."""
        ctx.save_for_backward(x)
        return x.clamp(min=0) if shown is None else shown.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        ordinary = grad * (x > 0)
        redirected = grad * ~((x < 0) & (grad > 0))
        if grad.dim() < 2:
            return (redirected if not bool(ordinary.any()) else ordinary), None
        silent = ~ordinary.flatten(1).any(1)
        return torch.where(silent.view(-1, *[1] * (grad.dim() - 1)), redirected, ordinary), None


def _softened(x: Tensor, out: Tensor, beta: Tensor) -> Tensor:
    """``out`` with the examples of finite ``beta`` (N,) replaced by ``softplus(β x) / β``."""
    if x.dim() < 1 or x.shape[0] != beta.shape[0]:
        return out
    finite = torch.isfinite(beta).view(-1, *[1] * (x.dim() - 1))
    scale = torch.where(torch.isfinite(beta), beta, 1.0).to(x).view(finite.shape)
    return torch.where(finite, F.softplus(x * scale) / scale, out)


@contextmanager
def redirected_relu(model: Any, softness: Tensor | None = None) -> Iterator[None]:
    """Give every ``nn.ReLU`` module of ``model`` the redirected gradient while active.

    A forward pre-hook keeps the ReLU's input (a clone, so in-place ReLUs work) and a forward
    hook returns :class:`_RedirectedReLU` of it in place of the ReLU's output (the same values,
    those of the caller's own hooks on the ReLU included; only the gradient changes).
    With ``softness`` (one β per example, shape (N,)), an example with a finite β gets
    ``softplus(β x) / β`` instead (a smooth continuation of the ReLU, exact as β → ∞; its
    forward values differ), an example with β = inf the redirected ReLU.
    Hooks are removed on exit, also after an exception. A model that is not an ``nn.Module``,
    or whose ReLUs are functional, is left as it is.
    """
    inputs: dict[int, list[Tensor]] = {}

    def keep(module: nn.Module, args: tuple[Any, ...]) -> None:
        inputs.setdefault(id(module), []).append(args[0].clone())

    def replace(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        x = inputs[id(module)].pop()
        # Forward values: the output the module and the caller's own hooks produced (a hook
        # may lesion units); only the gradient is redirected.
        same = isinstance(output, Tensor) and (output.shape, output.dtype, output.device) == (
            x.shape,
            x.dtype,
            x.device,
        )
        out = _RedirectedReLU.apply(x, output.detach() if same else None)
        return out if softness is None else _softened(x, out, softness)

    handles: list[RemovableHandle] = []
    with removing(handles):
        if isinstance(model, nn.Module):
            for module in model.modules():
                if isinstance(module, nn.ReLU):
                    handles.append(module.register_forward_pre_hook(keep))
                    handles.append(module.register_forward_hook(replace))
        yield


def soft_maximum(pre: Tensor, target: Any, tau: float | Tensor) -> Tensor:
    """``τ log Σ exp(z / τ)`` over the pre-activations ``z`` of each example's target, (N,).

    ``tau`` is one temperature or one per example (N,). Shifted by the target's own maximum
    (detached: the gradient is the softmax over the target's units, the largest included).

    Examples
    --------
    >>> round(float(soft_maximum(torch.tensor([[[[-1.0, -0.5]]]]), 0, 0.5)), 4)
    -0.3434
    """
    closest = select_layer_target(pre, target, "max").detach()
    temp = torch.as_tensor(tau, dtype=pre.dtype, device=pre.device)
    per_unit = temp.view(-1, *[1] * (pre.dim() - 1)) if temp.dim() else temp
    shift = closest.view(-1, *[1] * (pre.dim() - 1))
    scaled = (pre - shift) / per_unit
    # Only units outside the target can be above 0 (their exp would overflow: 0 * inf = nan);
    # `where`, not `clamp(max=0)`, whose zero gradient at 0 cut off the target's largest unit.
    scaled = torch.where(scaled > 0, torch.zeros_like(scaled), scaled)
    spread = select_layer_target(torch.exp(scaled), target, "sum")
    return temp * torch.log(spread) + closest


def rectified_objective(
    pre: Tensor, target: Any, reduction: str, tau: float | Tensor = TEMPERATURE_END
) -> tuple[Tensor, Tensor]:
    """The true value of a target behind a ReLU and the objective that optimises it.

    Parameters
    ----------
    pre : Tensor of shape (N, C, ...)
        The ReLU's input (the pre-activation), channels-first.
    target : int, tuple, list or Tensor
        A channel or unit, or one per example (not a callable).
    reduction : {"mean", "max", "sum"}
        How a channel becomes one value.
    tau : float or Tensor of shape (N,)
        Temperature of the soft maximum, > 0 (see :func:`temperature`).

    Returns
    -------
    value : Tensor of shape (N,)
        The target on ``relu(pre)``: exactly what the ReLU layer's output gives.
    objective : Tensor of shape (N,)
        ``value`` where it is > 0; where the target is silent (``value == 0``), the soft
        maximum ``τ log(sum(exp(z / τ)))`` over the pre-activations ``z`` of the target's
        units (:func:`soft_maximum`; for a unit target: its pre-activation), whose gradient
        points towards firing.

    Examples
    --------
    >>> pre = torch.tensor([[[[-1.0, -0.5]]], [[[2.0, -1.0]]]])
    >>> rectified_objective(pre, 0, "mean", tau=0.5)
    (tensor([0., 1.]), tensor([-0.3434,  1.0000]))
    """
    value = select_layer_target(pre.clamp(min=0), target, reduction)
    return value, torch.where(value > 0, value, soft_maximum(pre, target, tau))


def output_hooked(module: nn.Module) -> bool:
    """Whether a forward hook (the module's or a global one) may change ``module``'s output.

    The surrogate of :func:`rectified_objective` reads a ReLU's input and takes ``relu`` of it
    as the true value: exact only when nothing changes the output in between.
    """
    return bool(module._forward_hooks) or bool(nn.modules.module._global_forward_hooks)
