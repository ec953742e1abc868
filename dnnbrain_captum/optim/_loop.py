"""The pieces of :meth:`SynthesisImage.attribute`: its validated options and one step's parts.

Private to :mod:`dnnbrain_captum.optim.synthesis`; the public contract (defaults, validation
order and messages) is documented there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from dnnbrain_captum._utils.targets import per_example_targets
from dnnbrain_captum._utils.validation import non_negative, positive_int
from dnnbrain_captum.optim._objectives import (
    FOURIER_VARIANTS,
    REGULARIZERS,
    check_regularizers,
)
from dnnbrain_captum.optim._param import PARAMETRIZATIONS, ImageParam
from dnnbrain_captum.optim._relu import TEMPERATURE_END
from dnnbrain_captum.optim._settings import PRESETS, adam_kernel
from dnnbrain_captum.optim._transforms import Transform, resolve_transforms

__all__ = [
    "FIRED_STEPS",
    "FOCUS",
    "focus_bias",
    "IGNITION_COPIES",
    "History",
    "Options",
    "ignite",
    "resolve_options",
    "subset_task",
    "update",
    "view",
    "weighted_penalty",
]

#: In the extra steps of a still-silent target, an example stops once its target has fired on
#: this many steps (the best image seen is kept, so the margin above 0 can only grow).
FIRED_STEPS = 32


class Options(NamedTuple):
    """The validated settings of one synthesis run (presets applied)."""

    param: str
    decorrelate: bool
    transforms: list[Transform]
    lr: float
    n_iter: int
    n_polish: int
    weights: dict[str, float]
    blur_sigma: float
    blur_every: int
    fourier_factor: float
    fourier_variant: str
    redirect_relu: bool
    silent_steps: int
    diversity: float
    snapshot_every: int | None
    seed: int
    size: tuple[int, int]


@dataclass
class History:
    """Per-step activations and penalties (N,) and the snapshots (N, C, H, W) with their steps."""

    activations: list[Tensor] = field(default_factory=list)
    penalties: list[Tensor] = field(default_factory=list)
    snapshots: list[Tensor] = field(default_factory=list)
    snapshot_steps: list[int] = field(default_factory=list)

    def record(self, activation: Tensor, penalty: Tensor) -> None:
        """Keep one moment's activation and penalty, detached."""
        self.activations.append(activation.detach())
        self.penalties.append(penalty.detach())

    def snapshot(self, image: Tensor, step: int) -> None:
        """Keep the image as it is after ``step`` updates."""
        self.snapshots.append(image)
        self.snapshot_steps.append(step)


def _from_preset(preset: str, channels: int, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each None replaced by ``preset``'s entry (refusing an unknown preset)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    settings = PRESETS[preset]
    filled = {key: settings[key] if value is None else value for key, value in values.items()}
    if values["decorrelate"] is None:  # a preset's colour decorrelation applies to RGB only
        filled["decorrelate"] = bool(settings["decorrelate"]) and channels == 3
    return filled


def _check_image_param(param: Any, decorrelate: Any, channels: int) -> None:
    """Refuse an unknown parametrisation or a decorrelation that is not a bool or not RGB."""
    if param not in PARAMETRIZATIONS:
        raise ValueError(f"unknown parametrisation param={param!r}; choose from {PARAMETRIZATIONS}")
    if not isinstance(decorrelate, bool):
        raise TypeError(f"decorrelate must be a bool, got {decorrelate!r}")
    if decorrelate and channels != 3:
        raise ValueError(f"decorrelate=True needs 3-channel (RGB) images, got {channels} channels")


def _schedule(n_iter: Any, polish: Any, lr: Any) -> tuple[int, int, float]:
    """``(n_iter, n_polish, lr)`` validated: steps >= 1, polish in [0, 1], lr > 0."""
    n_iter = positive_int(n_iter, "n_iter")
    polish = non_negative(polish, "polish")
    if polish > 1:
        raise ValueError(f"polish must be a fraction in [0, 1], got {polish}")
    n_polish = round(polish * n_iter)
    lr = non_negative(lr, "lr")
    if lr == 0:
        raise ValueError("lr must be > 0, got 0")
    return n_iter, n_polish, lr


def _smoothing(
    blur_sigma: Any, blur_every: Any, fourier_factor: Any, fourier_variant: Any
) -> tuple[float, int, float]:
    """``(blur_sigma, blur_every, fourier_factor)`` validated, and the variant checked."""
    blur_sigma = non_negative(blur_sigma, "blur_sigma")
    blur_every = positive_int(blur_every, "blur_every")
    fourier_factor = non_negative(fourier_factor, "fourier_factor")
    if fourier_variant not in FOURIER_VARIANTS:
        raise ValueError(
            f"fourier_variant must be one of {FOURIER_VARIANTS}, got {fourier_variant!r}"
        )
    return blur_sigma, blur_every, fourier_factor


def resolve_options(
    x: Tensor,
    has_layer: bool,
    preset: str,
    values: dict[str, Any],
    blur_every: int,
    fourier_variant: str,
    diversity: float,
    snapshot_every: int | None,
    seed: int,
) -> Options:
    """Apply ``preset`` to the None entries of ``values`` and validate every option.

    ``values`` holds the preset-backed arguments of :meth:`SynthesisImage.attribute` (keys as
    in :data:`PRESETS`); ``x`` is the checked (N, C, H, W) batch. Checks run in the documented
    order, so the first wrong argument is the one named.
    """
    v = _from_preset(preset, x.shape[1], values)
    diversity = non_negative(diversity, "diversity")
    if diversity > 0 and not has_layer:
        raise ValueError("diversity needs a layer (it compares the layer's feature maps)")
    if not isinstance(v["redirect_relu"], bool):
        raise TypeError(f"redirect_relu must be a bool, got {v['redirect_relu']!r}")
    _check_image_param(v["param"], v["decorrelate"], x.shape[1])
    n_iter, n_polish, lr = _schedule(v["n_iter"], v["polish"], v["lr"])
    silent_steps = v["silent_steps"]
    if isinstance(silent_steps, bool) or not isinstance(silent_steps, int) or silent_steps < 0:
        raise ValueError(f"silent_steps must be an int >= 0, got {silent_steps!r}")
    weights = check_regularizers(v["regularizers"])
    blur_sigma, blur_every, fourier_factor = _smoothing(
        v["blur_sigma"], blur_every, v["fourier_factor"], fourier_variant
    )
    if snapshot_every is not None:
        snapshot_every = positive_int(snapshot_every, "snapshot_every")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    size = (x.shape[-2], x.shape[-1])
    return Options(
        param=v["param"],
        decorrelate=v["decorrelate"],
        transforms=resolve_transforms(v["transforms"], size),
        lr=lr,
        n_iter=n_iter,
        n_polish=n_polish,
        weights=weights,
        blur_sigma=blur_sigma,
        blur_every=blur_every,
        fourier_factor=fourier_factor,
        fourier_variant=fourier_variant,
        redirect_relu=v["redirect_relu"],
        silent_steps=silent_steps,
        diversity=diversity,
        snapshot_every=snapshot_every,
        seed=seed,
        size=size,
    )


def weighted_penalty(rendered: Tensor, weights: Mapping[str, float]) -> Tensor:
    """``Σ λ · regulariser(rendered)`` per image, shape (N,); zeros without any weight."""
    total = torch.zeros(rendered.shape[0], dtype=rendered.dtype, device=rendered.device)
    for name, weight in weights.items():
        if weight:
            total = total + weight * REGULARIZERS[name](rendered)
    return total


def view(
    rendered: Tensor,
    transforms: Sequence[Transform],
    generator: torch.Generator,
    size: tuple[int, int],
) -> Tensor:
    """What the model sees: ``rendered`` (N, C, H, W) transformed, resized back to ``size``."""
    seen = rendered
    for transform in transforms:
        seen = transform(seen, generator)
    if tuple(seen.shape[-2:]) != size:
        seen = F.interpolate(seen, size=size, mode="bilinear", align_corners=False)
    return seen


def update(
    image: ImageParam,
    optimizer: torch.optim.Optimizer,
    grad: Tensor,
    step: int,
    options: Options,
) -> None:
    """One update: Fourier-smooth ``grad``, Adam step, periodic blur, projection."""
    if options.fourier_factor > 0:
        grad = image.smooth_gradient(grad, options.fourier_factor, options.fourier_variant)
    image.tensor.grad = grad.contiguous()
    optimizer.step()
    image.tensor.grad = None
    if options.blur_sigma > 0 and (step + 1) % options.blur_every == 0:
        image.blur_(options.blur_sigma)
    image.project_()


def subset_task(target: Any, args: Any, index: Tensor, n: int) -> tuple[Any, Any]:
    """``(target, additional_forward_args)`` of the examples ``index`` of a batch of ``n``.

    A per-example target keeps the selected entries; a tensor argument whose first dimension
    is ``n`` keeps the selected rows; anything else applies to every example and is kept.
    """
    entries = per_example_targets(target, n)
    picked = target if entries is None else [entries[int(i)] for i in index]

    def rows(value: Any) -> Any:
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
            return value[index.to(value.device)]
        return value

    if isinstance(args, tuple):
        return picked, tuple(rows(a) for a in args)
    return picked, rows(args)


#: ``objective(rendered, tau, beta, focus) -> (true value, objective)``, each (N,); ``tau``,
#: ``beta`` (the softplus sharpness of the model's ReLUs, inf: the ReLU itself) and ``focus``
#: (which of the target's units the soft maximum reads: :data:`FOCUS`) are (N,).
_StepObjective = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]

#: The units of a spatial target that a copy's soft maximum reads.
FOCUS = ("all", "border", "interior")

#: The copies that each still-silent example runs in its extra steps, ``(τ at the first step,
#: softplus continuation)``; τ falls geometrically to 0.01. The continued copy sees every ReLU
#: of the model as ``softplus(β x) / β``, β rising from 1 to 100 over the first 70 % of the
#: steps, then the ReLU (Lucid-style redirected): dead units still pass a gradient.
IGNITION_COPIES = (
    (0.3, False, "all"),
    (0.3, True, "all"),
    (0.01, False, "all"),
    (0.3, False, "border"),
    (0.3, True, "border"),
    (0.3, False, "interior"),
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


def ignite(
    image: ImageParam,
    objective: _StepObjective,
    options: Options,
    n: int,
) -> tuple[Tensor, Tensor]:
    """The extra steps of ``n`` examples whose rectified target is still 0: best images seen.

    ``image`` holds the examples' start once per entry of :data:`IGNITION_COPIES`
    (copy-major, ``len(IGNITION_COPIES) * n`` rows). Up to ``options.silent_steps``
    untransformed steps of a fresh Adam (learning rate and step rules as :func:`update`);
    an example stops once one of its copies has fired (true value > 0) on :data:`FIRED_STEPS`
    steps, the loop once every example has. Returns, per example, the image (n, C, H, W) with
    the highest true value seen on any copy and step, and that value (n,): 0 if none fired.
    """
    copies = len(IGNITION_COPIES)
    focus = torch.tensor([FOCUS.index(c[2]) for c in IGNITION_COPIES]).repeat_interleave(n)
    optimizer = torch.optim.Adam([image.tensor], lr=options.lr, **adam_kernel(image.tensor))
    best = image.result()
    best_value = best.new_zeros(best.shape[0])
    fired = torch.zeros(best.shape[0], dtype=torch.long, device=best.device)
    for step in range(options.silent_steps):
        tau, beta = _schedules(step, options.silent_steps, n, best.device)
        with torch.enable_grad():
            rendered = image.render()
            value, goal = objective(
                rendered, tau.to(rendered.dtype), beta.to(rendered.dtype), focus
            )
            value = value.detach()
            better = value > best_value
            if bool(better.any()):
                best = torch.where(better.view(-1, 1, 1, 1), image.result(), best)
                best_value = torch.maximum(best_value, value)
            fired += value > 0
            active = ~(fired.view(copies, n) >= FIRED_STEPS).any(0).repeat(copies)
            if not bool(active.any()):
                break
            loss = (weighted_penalty(rendered, options.weights) - goal)[active].sum()
            (grad,) = torch.autograd.grad(loss, [image.tensor])
        update(image, optimizer, grad, step, options)
    pick = best_value.view(copies, n).argmax(0)
    rows = pick * n + torch.arange(n, device=pick.device)
    return best[rows], best_value[rows]


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
    reads = (code == 0) | ((code == 1) & frame) | ((code == 2) & ~frame)
    return torch.where(reads, 0.0, -1e4).to(pre.dtype).unsqueeze(1)
