"""Regularisers, Gaussian-blur preconditioning and Fourier gradient smoothing.

The regularisers measure one model-space image per example, with DNNBrain's definitions
(so its weights λ keep their meaning): ``l1 = Σ|x|``, ``l2 = sqrt(Σ x²)`` (the norm, not its
square) and ``tv = Σ|x[i+1, j] − x[i, j]| + Σ|x[i, j+1] − x[i, j]|`` (anisotropic total
variation), all summed over channels and pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from dnnbrain_captum._utils.filters import gaussian_blur as blur

__all__ = [
    "FOURIER_VARIANTS",
    "REGULARIZERS",
    "check_regularizers",
    "diversity_penalty",
    "fourier_filter",
    "fourier_smooth",
    "gaussian_blur",
    "l1_norm",
    "l2_norm",
    "total_variation",
]


def l1_norm(images: Tensor) -> Tensor:
    """``Σ|x|`` per example: (N, C, H, W) → (N,).

    Examples
    --------
    >>> l1_norm(torch.tensor([[[[1.0, -2.0]]]]))
    tensor([3.])
    """
    return images.abs().flatten(1).sum(1)


def l2_norm(images: Tensor) -> Tensor:
    """``sqrt(Σ x²)`` per example: (N, C, H, W) → (N,).

    Examples
    --------
    >>> l2_norm(torch.tensor([[[[3.0, -4.0]]]]))
    tensor([5.])
    """
    return images.pow(2).flatten(1).sum(1).sqrt()


def total_variation(images: Tensor) -> Tensor:
    """Anisotropic total variation per example: (N, C, H, W) → (N,).

    Examples
    --------
    >>> total_variation(torch.tensor([[[[0.0, 1.0], [3.0, 1.0]]]]))
    tensor([6.])
    """
    rows = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).sum(1)
    cols = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).sum(1)
    return rows + cols


def diversity_penalty(features: Tensor) -> Tensor:
    """Each example's mean similarity to the others' features (Olah et al. 2017's diversity).

    The features (N, C, ...) of each example give a Gram matrix ``G = F Fᵀ / P`` (F: C × P,
    P positions; a (N, C) output is its own feature vector); the penalty of example n is the
    mean cosine similarity between its flattened Gram matrix and those of the other
    examples. Minimising it pushes the batch towards different styles of solution. One
    example alone gets 0.

    Returns
    -------
    Tensor of shape (N,)

    Examples
    --------
    >>> same = torch.ones(2, 3, 4, 4)
    >>> diversity_penalty(same).round(decimals=4)
    tensor([1., 1.])
    >>> diversity_penalty(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    tensor([0., 0.])
    """
    n = features.shape[0]
    if n < 2:
        return features.new_zeros(n)
    if features.dim() >= 3:
        flat = features.flatten(2)
        styles = (flat @ flat.transpose(1, 2) / flat.shape[-1]).flatten(1)
    else:
        styles = features.flatten(1)
    unit = styles / styles.norm(dim=1, keepdim=True).clamp_min(1e-12)
    similarity = unit @ unit.T
    return (similarity.sum(1) - similarity.diagonal()) / (n - 1)


REGULARIZERS: dict[str, Callable[[Tensor], Tensor]] = {
    "l1": l1_norm,
    "l2": l2_norm,
    "tv": total_variation,
}


def check_regularizers(regularizers: Mapping[str, float] | None) -> dict[str, float]:
    """Validate ``{name: weight}``; names are case-insensitive, weights finite and >= 0.

    Raises
    ------
    TypeError
        If ``regularizers`` is not a mapping or a weight is not a number.
    ValueError
        For an unknown name or a negative or non-finite weight.
    """
    if regularizers is None:
        return {}
    if not isinstance(regularizers, Mapping):
        raise TypeError(
            "regularizers must be a mapping {name: weight} such as {'tv': 0.1}, got "
            f"{type(regularizers).__name__}"
        )
    checked: dict[str, float] = {}
    for name, weight in regularizers.items():
        key = name.lower() if isinstance(name, str) else name
        if key not in REGULARIZERS:
            raise ValueError(
                f"unknown regularizer {name!r}; choose from {sorted(REGULARIZERS)} "
                "(case-insensitive)"
            )
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise TypeError(f"the weight of regularizer {name!r} must be a number, got {weight!r}")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"the weight of regularizer {name!r} must be >= 0, got {weight}")
        checked[key] = float(weight)
    return checked


def gaussian_blur(images: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Blur each channel in 2-D, edges extended with the nearest pixel.

    As ``skimage.filters.gaussian``/``scipy.ndimage`` with ``mode="nearest"`` per channel
    (DNNBrain's preconditioning blurred across the colour channels too; this does not). See
    :func:`dnnbrain_captum._utils.filters.gaussian_blur`.

    Examples
    --------
    >>> x = torch.zeros(1, 1, 1, 5)
    >>> x[..., 2] = 1.0
    >>> gaussian_blur(x, 1.0)[0, 0, 0].round(decimals=4)
    tensor([0.0540, 0.2420, 0.3989, 0.2420, 0.0540])
    """
    return blur(images, sigma, mode="nearest", truncate=truncate)


FOURIER_VARIANTS = ("fftfreq", "dnnbrain")


def fourier_filter(height: int, width: int, factor: float, variant: str = "fftfreq") -> Tensor:
    """The gradient-smoothing filter ``F = t / mean(t)``, ``t = 1 / max(1, r² ** factor)``.

    ``r²`` is the squared radial frequency index of each FFT coefficient. ``"fftfreq"`` uses
    the true index ``min(k, n − k)`` (a filter symmetric like the spectrum of a real image);
    ``"dnnbrain"`` reproduces DNNBrain's off-by-one ``min(k, n − 1 − k)``.

    Parameters
    ----------
    height, width : int
        Image size.
    factor : float
        Strength; ``t = f^(−2·factor)`` (0.25 gives DNNBrain's docstring ``1/sqrt(f)``).
    variant : {"fftfreq", "dnnbrain"}
        Frequency indexing.

    Returns
    -------
    Tensor of shape (height, width), float64
        Multiplies the full ``fft2`` of a gradient (the first ``width // 2 + 1`` columns
        multiply its ``rfft2``).

    Examples
    --------
    >>> f = fourier_filter(224, 224, 0.25, "dnnbrain")
    >>> round(f[0, 0].item(), 3), round(f[112, 112].item(), 4)
    (8.408, 0.6711)
    """
    if variant not in FOURIER_VARIANTS:
        raise ValueError(f"fourier_variant must be one of {FOURIER_VARIANTS}, got {variant!r}")
    offset = 1 if variant == "dnnbrain" else 0
    ky = torch.arange(height, dtype=torch.float64)
    kx = torch.arange(width, dtype=torch.float64)
    ty = torch.minimum(ky, height - offset - ky)
    tx = torch.minimum(kx, width - offset - kx)
    radius2 = ty[:, None] ** 2 + tx[None, :] ** 2
    t = 1.0 / torch.clamp(radius2**factor, min=1.0)
    return t / t.mean()


def fourier_smooth(grad: Tensor, factor: float, variant: str = "fftfreq") -> Tensor:
    """Smooth a gradient (or any image batch) with :func:`fourier_filter` over (H, W).

    ``irfft2(rfft2(grad) · F[:, : W // 2 + 1])``: for ``"fftfreq"`` this equals
    ``ifft2(fft2(grad) · F).real``; for ``"dnnbrain"`` it is what DNNBrain's removed
    ``torch.rfft``/``torch.irfft`` call computed. ``factor = 0`` returns ``grad`` unchanged.

    Parameters
    ----------
    grad : Tensor of shape (..., H, W)
    factor : float
        Strength, >= 0.
    variant : {"fftfreq", "dnnbrain"}
        Frequency indexing of the filter.

    Returns
    -------
    Tensor of the shape of ``grad``

    Examples
    --------
    >>> g = torch.zeros(1, 1, 4, 4)
    >>> g[..., 0, 0] = 1.0
    >>> bool(fourier_smooth(g, 0.0).equal(g))
    True
    """
    if factor == 0:
        return grad
    height, width = grad.shape[-2:]
    weights = fourier_filter(height, width, factor, variant).to(grad.device, grad.dtype)
    spectrum = torch.fft.rfft2(grad) * weights[:, : width // 2 + 1]
    return torch.fft.irfft2(spectrum, s=(height, width))
