"""Extra searches for targets behind a ReLU that are still silent after the main steps.

Private to :mod:`dnnbrain_captum.optim.synthesis` (its ``silent_steps`` argument). An example
whose rectified target is exactly 0 on its returned image starts again from its own start
image, as several copies in one batch that search differently (:data:`IGNITION_COPIES`), for
at most ``silent_steps`` untransformed steps; its image is replaced only by one on which the
target fires (the one with the highest true value seen). Measured on the digits CNN's
data-silent channels: benchmarks/README.md, "Can the data-silent channels fire at all?".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dnnbrain_captum._utils.targets import (
    per_example_targets,
    select_layer_target,
    take_examples,
)
from dnnbrain_captum.optim._loop import Options, update, weighted_penalty
from dnnbrain_captum.optim._param import ImageParam
from dnnbrain_captum.optim._relu import TEMPERATURE_END, redirected_relu, soft_maximum
from dnnbrain_captum.optim._settings import adam_kernel

__all__ = [
    "FIRED_STEPS",
    "FOCUS",
    "IGNITION_COPIES",
    "focus_bias",
    "ignite",
    "ignition_objective",
    "reignite",
    "subset_task",
]

#: In the extra steps of a still-silent target, an example stops once its target has fired on
#: this many steps (the best image seen is kept, so the margin above 0 can only grow).
FIRED_STEPS = 32


def subset_task(target: Any, args: Any, index: Tensor, n: int) -> tuple[Any, Any]:
    """``(target, additional_forward_args)`` of the examples ``index`` of a batch of ``n``.

    A per-example target keeps the selected entries; the arguments are taken by
    :func:`~dnnbrain_captum._utils.targets.take_examples` (rows of batch-first tensors).
    """
    entries = per_example_targets(target, n)
    picked = target if entries is None else [entries[int(i)] for i in index]
    return picked, take_examples(args, index, n)


#: ``objective(rendered, tau, beta, focus) -> (true value, objective)``, each (N,); ``tau``,
#: ``beta`` (the softplus sharpness of the model's ReLUs, inf: the ReLU itself) and ``focus``
#: (which of the target's units the soft maximum reads: :data:`FOCUS`) are (N,) for the N rows
#: still in the batch; the last argument holds their indices among all the copies' rows.
_StepObjective = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]

#: The units of a spatial target that a copy's soft maximum reads.
FOCUS = ("all", "border", "interior", "corners")

#: The copies that each still-silent example runs in its extra steps, ``(τ at the first step,
#: softplus continuation, focus, contrast)``. τ falls geometrically to 0.01. A continued copy
#: sees every ReLU of the model as ``softplus(β x) / β``, β rising from 1 to 100 over the first
#: 70 % of the steps, then the ReLU (Lucid-style redirected): dead units still pass a gradient.
#: The focus (:data:`FOCUS`) says which of the target's units the soft maximum reads (units on
#: the map's frame see the zero padding and fire more easily); a contrast below 1 starts from
#: the start image shrunk towards mid-grey. Chosen on the digits CNN's data-silent channels
#: (benchmarks/README.md): a border, a corner, a softplus and a low-contrast copy each fired a
#: channel (from one start) that the plain first copy did not.
IGNITION_COPIES = (
    (0.3, False, "all", 1.0),
    (0.3, True, "all", 1.0),
    (0.01, False, "all", 1.0),
    (0.3, False, "border", 1.0),
    (0.3, True, "border", 1.0),
    (0.3, False, "interior", 1.0),
    (0.3, False, "corners", 1.0),
    (0.3, True, "corners", 1.0),
    (0.3, False, "all", 0.1),
    (0.3, True, "all", 0.1),
    (0.3, False, "border", 0.1),
    (0.3, True, "corners", 0.1),
)
_SOFT_FRACTION = 0.7
_SOFT_END = 100.0


def _schedules(step: int, steps: int, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-row ``(tau, beta)`` at ``step`` for ``n`` examples copied as in IGNITION_COPIES."""
    start = torch.tensor([c[0] for c in IGNITION_COPIES], dtype=torch.float64)
    tau = start * (TEMPERATURE_END / start) ** (step / max(steps - 1, 1))
    soft_steps = _SOFT_FRACTION * steps
    sharp = _SOFT_END ** (step / soft_steps) if step < soft_steps else math.inf
    beta = torch.tensor([sharp if c[1] else math.inf for c in IGNITION_COPIES])
    return (
        tau.repeat_interleave(n).to(device=device),
        beta.repeat_interleave(n).to(device=device),
    )


def _drop(
    image: ImageParam, optimizer: torch.optim.Optimizer, keep: Tensor, options: Options
) -> torch.optim.Optimizer:
    """Keep only the rows ``keep`` of ``image`` (in place) and of Adam's state: a new Adam."""
    old = image.tensor
    state = optimizer.state[old]
    image.tensor = old.detach()[keep].clone().requires_grad_(True)
    image.shape = (len(keep), *image.shape[1:])
    kept = torch.optim.Adam([image.tensor], lr=options.lr, **adam_kernel(image.tensor))
    kept.state[image.tensor] = {
        key: value[keep] if value.dim() > 0 and value.shape[0] == old.shape[0] else value
        for key, value in state.items()
    }
    return kept


def ignite(
    image: ImageParam,
    objective: _StepObjective,
    options: Options,
    n: int,
) -> tuple[Tensor, Tensor]:
    """The extra steps of ``n`` examples whose rectified target is still 0: best images seen.

    ``image`` holds the examples' start once per entry of :data:`IGNITION_COPIES`
    (copy-major, ``len(IGNITION_COPIES) * n`` rows; it is consumed). Up to
    ``options.silent_steps`` untransformed steps of a fresh Adam (learning rate and step rules
    as :func:`update`); an example stops once one of its copies has fired (true value > 0) on
    :data:`FIRED_STEPS` steps, and its copies leave the batch; the loop ends when every
    example has stopped. ``objective`` gets the rows still in the batch (indices of the
    copy-major rows) as its last argument. Returns, per example, the image (n, C, H, W) with
    the highest true value seen on any copy and step, and that value (n,): 0 if none fired.
    """
    copies = len(IGNITION_COPIES)
    focus = torch.tensor([FOCUS.index(c[2]) for c in IGNITION_COPIES]).repeat_interleave(n)
    optimizer = torch.optim.Adam([image.tensor], lr=options.lr, **adam_kernel(image.tensor))
    best = image.result()
    best_value = best.new_zeros(best.shape[0])
    fired = torch.zeros(best.shape[0], dtype=torch.long, device=best.device)
    rows = torch.arange(best.shape[0], device=best.device)
    for step in range(options.silent_steps):
        tau, beta = _schedules(step, options.silent_steps, n, best.device)
        with torch.enable_grad():
            rendered = image.render()
            value, goal = objective(
                rendered,
                tau[rows].to(rendered.dtype),
                beta[rows].to(rendered.dtype),
                focus[rows.cpu()],
                rows,
            )
            value = value.detach()
            better = value > best_value[rows]
            if bool(better.any()):
                best[rows[better]] = image.result()[better]
                best_value[rows[better]] = value[better]
            fired[rows] += value > 0
            active = ~(fired.view(copies, n) >= FIRED_STEPS).any(0).repeat(copies)[rows]
            if not bool(active.any()):
                break
            loss = (weighted_penalty(rendered, options.weights) - goal)[active].sum()
            (grad,) = torch.autograd.grad(loss, [image.tensor])
        update(image, optimizer, grad, step, options)
        if not bool(active.all()):  # the copies of examples that have stopped leave the batch
            keep = active.nonzero().flatten()
            rows = rows[keep]
            optimizer = _drop(image, optimizer, keep, options)
    pick = best_value.view(copies, n).argmax(0)
    chosen = pick * n + torch.arange(n, device=pick.device)
    return best[chosen], best_value[chosen]


def focus_bias(pre: Tensor, focus: Tensor) -> Tensor:
    """0 on the units each example's soft maximum reads, −1e4 elsewhere: (N, 1, H, W) or 0.

    ``focus`` (N,) indexes :data:`FOCUS`: every unit, the units on the map's frame, or the
    others (maps smaller than 3 × 3, and outputs without two spatial dimensions: every unit).
    """
    if pre.dim() != 4 or min(pre.shape[-2:]) < 3:
        return pre.new_zeros(())
    height, width = pre.shape[-2:]
    frame = torch.ones(height, width, dtype=torch.bool, device=pre.device)
    frame[1:-1, 1:-1] = False
    code = focus.to(pre.device).view(-1, 1, 1)
    corner = torch.zeros_like(frame)
    corner[0, 0] = corner[0, -1] = corner[-1, 0] = corner[-1, -1] = True
    reads = (code == 0) | ((code == 1) & frame) | ((code == 2) & ~frame) | ((code == 3) & corner)
    return torch.where(reads, 0.0, -1e4).to(pre.dtype).unsqueeze(1)


def ignition_objective(
    model: Any,
    pre_activation: Callable[[Tensor], Tensor],
    evaluate: Callable[[Tensor], Tensor],
    images: Tensor,
    task: tuple[Any, str],
    schedule: tuple[Tensor, Tensor, Tensor],
) -> tuple[Tensor, Tensor]:
    """One extra step's true value and objective (N,) for the copies in ``images``.

    ``pre_activation(images)`` is the target ReLU's input, ``evaluate(images)`` the target's
    true value; ``task`` is ``(target, reduction)``, ``schedule`` the copies' ``(tau, beta,
    focus)``. The redirected-ReLU copies maximise the soft maximum of the focused units until
    the target fires, then the true value; the softplus copies (finite β), whose
    pre-activation is the continuation's and not the model's, always the soft maximum, and
    their true value is evaluated apart (no gradient).
    """
    target, reduction = task
    tau, beta, focus = schedule
    softened = torch.isfinite(beta)
    with redirected_relu(model, beta if bool(softened.any()) else None):
        pre = pre_activation(images)
    value = select_layer_target(pre.clamp(min=0), target, reduction)
    climb = soft_maximum(pre + focus_bias(pre, focus), target, tau)
    objective = torch.where(value > 0, value, climb)
    if bool(softened.any()):
        objective = torch.where(softened, climb, objective)
        with torch.no_grad():
            value = torch.where(softened, evaluate(images), value)
    return value, objective


def reignite(
    result: Tensor,
    value: Tensor,
    start: Tensor,
    like: ImageParam,
    options: Options,
    task: tuple[Any, str, Any],
    objective: Callable[[Tensor, Any, Any, tuple[Tensor, Tensor, Tensor]], tuple[Tensor, Tensor]],
) -> Tensor:
    """``result`` (N, C, H, W) with each example whose ``value`` (N,) is 0 searched again.

    ``start`` holds the caller's start images (N, C, H, W), parametrised again as ``like``
    (the main run's image); ``task`` is ``(target,
    reduction, additional_forward_args)``; ``objective(images, target, args, schedule)`` is
    :func:`ignition_objective` bound to the model. Returns ``result`` itself when no example
    is silent, else a copy with the fired examples' images replaced.
    """
    index = (value == 0).nonzero().flatten()
    if index.numel() == 0:
        return result
    target, reduction, args = task
    rows = index.repeat(len(IGNITION_COPIES))
    part_target, part_args = subset_task(target, args, rows, result.shape[0])
    contrast = torch.tensor([c[3] for c in IGNITION_COPIES], dtype=start.dtype)
    contrast = contrast.repeat_interleave(len(index)).to(start.device).view(-1, 1, 1, 1)
    value_start = like.range.to_value(start[rows.to(start.device)])
    middle = 0.5 * (like.range.low + like.range.high)
    starts = like.range.to_model(middle + contrast * (value_start - middle))
    copies = ImageParam(starts, like.kind, like.decorrelate, like.range, like.clamp)
    best, reached = ignite(
        copies,
        lambda images, tau, beta, focus, live: objective(
            images.to(result.dtype),
            *subset_task(part_target, part_args, live, len(rows)),
            (tau, beta, focus),
        ),
        options,
        len(index),
    )
    fired = reached > 0
    result = result.clone()
    result[index[fired].to(result.device)] = best[fired].to(result.dtype)
    return result
