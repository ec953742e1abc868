"""Activation maximisation: :class:`SynthesisImage` and its building blocks.

Parametrisations (pixels, 1/f Fourier spectrum, colour decorrelation) live in ``_param``,
random robustness transforms in ``_transforms``, regularisers, blur preconditioning and
Fourier gradient smoothing in ``_objectives``.
"""

from dnnbrain_captum.optim._objectives import (
    diversity_penalty,
    fourier_filter,
    fourier_smooth,
    gaussian_blur,
    l1_norm,
    l2_norm,
    total_variation,
)
from dnnbrain_captum.optim._transforms import (
    Jitter,
    Pad,
    RandomRotation,
    RandomScale,
    Transform,
    standard_transforms,
)
from dnnbrain_captum.optim.synthesis import PRESETS, SynthesisImage, SynthesisResult, random_images

__all__ = [
    "PRESETS",
    "Jitter",
    "Pad",
    "RandomRotation",
    "RandomScale",
    "SynthesisImage",
    "SynthesisResult",
    "Transform",
    "diversity_penalty",
    "fourier_filter",
    "fourier_smooth",
    "gaussian_blur",
    "l1_norm",
    "l2_norm",
    "random_images",
    "standard_transforms",
    "total_variation",
]
