"""The pieces of :meth:`SynthesisImage.attribute`: its validated options and one step's parts.

Private to :mod:`dnnbrain_captum.optim.synthesis`; the public contract (defaults, validation
order and messages) is documented there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from dnnbrain_captum._utils.validation import non_negative, positive_int
from dnnbrain_captum.optim._objectives import (
    FOURIER_VARIANTS,
    REGULARIZERS,
    check_regularizers,
)
from dnnbrain_captum.optim._param import PARAMETRIZATIONS, ImageParam
from dnnbrain_captum.optim._settings import PRESETS
from dnnbrain_captum.optim._transforms import Transform, resolve_transforms

__all__ = [
    "History",
    "Options",
    "SynthesisResult",
    "resolve_options",
    "update",
    "view",
    "weighted_penalty",
]


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


class SynthesisResult(NamedTuple):
    """What :meth:`SynthesisImage.attribute` returns with ``return_history`` or snapshots.

    Attributes
    ----------
    images : Tensor of shape (N, C, H, W)
        The optimised images in model space.
    activation : Tensor of shape (N, n_iter + 1)
        The target's value: entry ``i < n_iter`` is what step ``i`` maximised (on the
        transformed image it saw, before its update); entry ``n_iter`` is the value for
        ``images`` as returned (no transforms).
    penalty : Tensor of shape (N, n_iter + 1)
        The weighted sum of the regularisers at the same moments (zeros without any).
        The minimised loss is ``penalty − activation``.
    snapshots : Tensor of shape (N, S, C, H, W) or None
        The image after ``snapshot_steps[s]`` updates (0 = the initial image), if requested.
    snapshot_steps : tuple of int
        The step of each snapshot: ``0, k, 2k, … <= n_iter``.
    """

    images: Tensor
    activation: Tensor
    penalty: Tensor
    snapshots: Tensor | None
    snapshot_steps: tuple[int, ...]


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

    def close(
        self, images: Tensor, activation: Tensor, penalty: Tensor, n_iter: int, every: int | None
    ) -> SynthesisResult:
        """The :class:`SynthesisResult`, this history closed with the returned ``images``.

        ``images`` (N, C, H, W) are snapshotted when ``n_iter`` is a multiple of ``every``,
        their ``activation`` and ``penalty`` (N,) recorded as entry ``n_iter``; the history is
        stacked to (N, n_iter + 1) and the snapshots to (N, S, C, H, W).
        """
        if every is not None and n_iter % every == 0:
            self.snapshot(images, n_iter)
        self.record(activation, penalty)
        return SynthesisResult(
            images=images,
            activation=torch.stack(self.activations, dim=1),
            penalty=torch.stack(self.penalties, dim=1),
            snapshots=torch.stack(self.snapshots, dim=1) if self.snapshots else None,
            snapshot_steps=tuple(self.snapshot_steps),
        )


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
    values = dict(values)
    silent_steps = values.pop("silent_steps")
    v = _from_preset(preset, x.shape[1], values)
    diversity = non_negative(diversity, "diversity")
    if diversity > 0 and not has_layer:
        raise ValueError("diversity needs a layer (it compares the layer's feature maps)")
    if not isinstance(v["redirect_relu"], bool):
        raise TypeError(f"redirect_relu must be a bool, got {v['redirect_relu']!r}")
    _check_image_param(v["param"], v["decorrelate"], x.shape[1])
    n_iter, n_polish, lr = _schedule(v["n_iter"], v["polish"], v["lr"])
    if silent_steps is None:  # the preset's multiple of the steps
        silent_steps = PRESETS[preset]["silent_multiple"] * n_iter
    if isinstance(silent_steps, bool) or not isinstance(silent_steps, int):
        raise TypeError(f"silent_steps must be an int, got {silent_steps!r}")
    if silent_steps < 0:
        raise ValueError(f"silent_steps must be >= 0, got {silent_steps}")
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
