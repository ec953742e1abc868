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
objective instead, used only while the true rectified value is exactly 0: the largest
pre-activation of its target (the unit closest to firing) plus τ·log-sum-exp(z/τ) of all its
units' pre-activations z (a soft maximum that also pulls up the runners-up, so the climb is not
stuck on one unit that cannot fire: with the hard maximum alone, channel 3 of the digits CNN's
conv5_relu stayed at 0 from a noise start, all its units at −1.5 to −28, whatever the number
of steps). The value reported is always the true one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from dnnbrain_captum._utils.hooks import removing
from dnnbrain_captum._utils.targets import select_layer_target

__all__ = ["SOFT_MAX_TEMPERATURE", "rectified_objective", "redirected_relu"]

#: Temperature τ of the surrogate's soft maximum, in the layer's activation units. Measured on
#: the digits CNN's conv3–conv5 ReLUs (grey and noise starts): ties at 0 with the data 35 at
#: τ = 0.5, 38 at 0.3, 43 at 1.0, 38 with the hard maximum alone (which also lost a channel).
SOFT_MAX_TEMPERATURE = 0.5


class _RedirectedReLU(torch.autograd.Function):
    """``relu(x)`` whose backward redirects the gradient of examples with no active unit."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        ordinary = grad * (x > 0)
        redirected = grad * ~((x < 0) & (grad > 0))
        if grad.dim() < 2:
            return redirected if not bool(ordinary.any()) else ordinary
        silent = ~ordinary.flatten(1).any(1)
        return torch.where(silent.view(-1, *[1] * (grad.dim() - 1)), redirected, ordinary)


@contextmanager
def redirected_relu(model: Any) -> Iterator[None]:
    """Give every ``nn.ReLU`` module of ``model`` the redirected gradient while active.

    A forward pre-hook keeps the ReLU's input (a clone, so in-place ReLUs work) and a forward
    hook returns :class:`_RedirectedReLU` of it in place of the ReLU's output (equal values).
    Hooks are removed on exit, also after an exception. A model that is not an ``nn.Module``,
    or whose ReLUs are functional, is left as it is.
    """
    inputs: dict[int, list[Tensor]] = {}

    def keep(module: nn.Module, args: tuple[Any, ...]) -> None:
        inputs.setdefault(id(module), []).append(args[0].clone())

    def replace(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        return _RedirectedReLU.apply(inputs[id(module)].pop())

    handles: list[RemovableHandle] = []
    with removing(handles):
        if isinstance(model, nn.Module):
            for module in model.modules():
                if isinstance(module, nn.ReLU):
                    handles.append(module.register_forward_pre_hook(keep))
                    handles.append(module.register_forward_hook(replace))
        yield


def rectified_objective(pre: Tensor, target: Any, reduction: str) -> tuple[Tensor, Tensor]:
    """The true value of a target behind a ReLU and the objective that optimises it.

    Parameters
    ----------
    pre : Tensor of shape (N, C, ...)
        The ReLU's input (the pre-activation), channels-first.
    target : int, tuple, list or Tensor
        A channel or unit, or one per example (not a callable).
    reduction : {"mean", "max", "sum"}
        How a channel becomes one value.

    Returns
    -------
    value : Tensor of shape (N,)
        The target on ``relu(pre)``: exactly what the ReLU layer's output gives.
    objective : Tensor of shape (N,)
        ``value`` where it is > 0; where the target is silent (``value == 0``),
        ``max(z) + τ log(sum(exp(z / τ)))`` over the pre-activations ``z`` of the target's
        units (τ = :data:`SOFT_MAX_TEMPERATURE`)
        (for a unit target: twice its pre-activation), whose gradient points towards firing.

    Examples
    --------
    >>> pre = torch.tensor([[[[-1.0, -0.5]]], [[[2.0, -1.0]]]])
    >>> rectified_objective(pre, 0, "mean")
    (tensor([0., 1.]), tensor([-0.8434,  1.0000]))
    """
    value = select_layer_target(pre.clamp(min=0), target, reduction)
    closest = select_layer_target(pre, target, "max")
    # τ·log-sum-exp(z/τ) of the target's units, shifted by their maximum for stability; the
    # clamp only touches units outside the target (exp would overflow there: 0 * inf = nan).
    shift = closest.detach().view(-1, *[1] * (pre.dim() - 1))
    scaled = ((pre - shift) / SOFT_MAX_TEMPERATURE).clamp(max=0)
    spread = select_layer_target(torch.exp(scaled), target, "sum")
    smooth = SOFT_MAX_TEMPERATURE * torch.log(spread) + shift.flatten()
    return value, torch.where(value > 0, value, closest + smooth)
