"""Random, differentiable image transforms for transformation robustness (Lucid/Lucent).

Each transform is called as ``transform(images, generator)`` on a model-space batch
(N, C, H, W) and draws its random parameters (python numbers) from ``generator``, a CPU
``torch.Generator``. One draw is applied to the whole batch, so what happens to an example
never depends on which other examples share its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor
from torch.nn import functional as F

from dnnbrain_captum._utils.validation import finite

__all__ = [
    "resolve_transforms",
    "Jitter",
    "Pad",
    "RandomRotation",
    "RandomScale",
    "Transform",
    "standard_transforms",
]


class Transform(Protocol):
    """A random image transform: ``(images (N, C, H, W), generator) -> images``."""

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor: ...


def _choice(values: Sequence[float], generator: torch.Generator) -> float:
    index = int(torch.randint(len(values), (1,), generator=generator))
    return float(values[index])


class Pad:
    """Pad every side by ``width`` pixels (``mode``: "reflect", "replicate" or "constant").

    Examples
    --------
    >>> Pad(1)(torch.ones(1, 3, 2, 2), torch.Generator()).shape
    torch.Size([1, 3, 4, 4])
    """

    def __init__(self, width: int, mode: str = "reflect", value: float = 0.0) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or width < 0:
            raise ValueError(f"Pad width must be an int >= 0, got {width!r}")
        if mode not in ("reflect", "replicate", "constant"):
            raise ValueError(f"Pad mode must be 'reflect', 'replicate' or 'constant', got {mode!r}")
        self.width, self.mode, self.value = width, mode, finite(value, "Pad value")

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if self.width == 0:
            return images
        pad = (self.width,) * 4
        if self.mode == "reflect" and min(images.shape[-2:]) <= self.width:
            return F.pad(images, pad, mode="replicate")
        if self.mode == "constant":
            return F.pad(images, pad, mode="constant", value=self.value)
        return F.pad(images, pad, mode=self.mode)

    def __repr__(self) -> str:
        return f"Pad({self.width}, mode={self.mode!r})"


class Jitter:
    """Random crop that drops up to ``shift`` rows and columns (a random translation).

    Examples
    --------
    >>> Jitter(2)(torch.ones(1, 3, 8, 8), torch.Generator().manual_seed(0)).shape
    torch.Size([1, 3, 6, 6])
    """

    def __init__(self, shift: int) -> None:
        if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
            raise ValueError(f"Jitter shift must be an int >= 0, got {shift!r}")
        self.shift = shift

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if self.shift == 0:
            return images
        h, w = images.shape[-2:]
        shift = min(self.shift, h - 1, w - 1)
        dy, dx = (int(v) for v in torch.randint(shift + 1, (2,), generator=generator))
        return images[..., dy : h - shift + dy, dx : w - shift + dx]

    def __repr__(self) -> str:
        return f"Jitter({self.shift})"


class RandomScale:
    """Resize by a factor drawn from ``scales`` (bilinear).

    Examples
    --------
    >>> RandomScale([2.0])(torch.ones(1, 3, 4, 4), torch.Generator()).shape
    torch.Size([1, 3, 8, 8])
    """

    def __init__(self, scales: Sequence[float]) -> None:
        values = [float(s) for s in scales]
        if not values or any(not math.isfinite(s) or s <= 0 for s in values):
            raise ValueError(f"RandomScale needs positive scales, got {list(scales)!r}")
        self.scales = values

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        scale = _choice(self.scales, generator)
        h, w = images.shape[-2:]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if size == (h, w):
            return images
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)

    def __repr__(self) -> str:
        return f"RandomScale({self.scales})"


class RandomRotation:
    """Rotate about the centre by an angle (degrees) drawn from ``angles``; same size.

    Examples
    --------
    >>> x = torch.rand(1, 3, 5, 5)
    >>> torch.allclose(RandomRotation([0.0])(x, torch.Generator()), x, atol=1e-6)
    True
    """

    def __init__(self, angles: Sequence[float]) -> None:
        values = [float(a) for a in angles]
        if not values or any(not math.isfinite(a) for a in values):
            raise ValueError(f"RandomRotation needs finite angles, got {list(angles)!r}")
        self.angles = values

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        angle = math.radians(_choice(self.angles, generator))
        if angle == 0.0:
            return images
        n, _, h, w = images.shape
        cos, sin = math.cos(angle), math.sin(angle)
        # affine_grid works in normalised coordinates; correct for a non-square aspect ratio.
        theta = torch.tensor(
            [[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]],
            dtype=images.dtype,
            device=images.device,
        ).expand(n, 2, 3)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )

    def __repr__(self) -> str:
        return f"RandomRotation({self.angles})"


def standard_transforms(image_size: tuple[int, int] | int) -> list[Transform]:
    """Lucid's standard robustness transforms, scaled to the image size.

    At 224 pixels: pad 12 (reflect), jitter 8, scale in 1 ± 0.1, rotate by −10…10 degrees,
    jitter 4 (Olah et al. 2017); pixel amounts scale with the image side (at least 1).

    Examples
    --------
    >>> standard_transforms(224)[:2]
    [Pad(12, mode='reflect'), Jitter(8)]
    """
    side = image_size if isinstance(image_size, int) else min(image_size)

    def pixels(amount: int) -> int:
        return max(1, round(amount * side / 224))

    return [
        Pad(pixels(12)),
        Jitter(pixels(8)),
        RandomScale([1 + (k - 5) / 50 for k in range(11)]),
        RandomRotation([float(a) for a in range(-10, 11)]),
        Jitter(pixels(4)),
    ]


def resolve_transforms(
    transforms: str | Sequence[Transform] | None, size: tuple[int, int]
) -> list[Transform]:
    """The transforms of ``SynthesisImage``: "standard", "none"/None or the user's callables."""
    if transforms is None:
        return []
    if isinstance(transforms, str):
        if transforms == "standard":
            return standard_transforms(size)
        if transforms == "none":
            return []
        raise ValueError(
            f"transforms must be 'standard', 'none' or a sequence of transforms, got {transforms!r}"
        )
    items = list(transforms)
    for item in items:
        if not callable(item):
            raise TypeError(
                f"every transform must be callable as t(images, generator), got {item!r}"
            )
    return items
