"""Image parametrisations for activation maximisation: pixels or a 1/f-scaled spectrum.

A parametrisation owns one leaf tensor (the only thing the optimiser changes) and renders
it to a model-space image of shape (N, C, H, W). Two spaces appear below:

* *model space*: what the network receives (normalised with ``mean``/``std``);
* *value space*: the unnormalised picture, valid inside ``value_range`` (e.g. [0, 1]).

``"pixel"`` without colour decorrelation optimises the model-space image itself (DNNBrain's
parametrisation, so DNNBrain's learning rates and regulariser weights keep their meaning);
with ``clamp=True`` it is projected back into the valid range after every step.
``"fft"`` and decorrelated parametrisations optimise an unbounded tensor that is mapped into
value space by a sigmoid (``clamp=True``) or used as is (``clamp=False``), then normalised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from dnnbrain_captum._utils.validation import check_finite
from dnnbrain_captum.optim._objectives import fourier_filter, fourier_smooth, gaussian_blur

__all__ = [
    "COLOR_CORRELATION",
    "PARAMETRIZATIONS",
    "ImageParam",
    "ValueRange",
    "random_images",
    "spectrum_scale",
]

PARAMETRIZATIONS = ("pixel", "fft")

# Square root of the colour covariance of natural (ImageNet) images, as used by Lucid
# (Olah et al. 2017): a de-correlated parameter is mixed into RGB with this matrix so that
# an isotropic step in the parameter is a natural-looking colour change.
COLOR_CORRELATION = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
)

_EPS = 1e-4


class ValueRange:
    """The model's normalisation and the valid pixel range, as per-channel tensors.

    ``model = (value − mean) / std``; valid values lie in ``[low, high]`` (value space).
    """

    def __init__(
        self,
        channels: int,
        mean: Sequence[float] | float | None,
        std: Sequence[float] | float | None,
        value_range: tuple[float, float],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.mean = _per_channel(mean, 0.0, channels, "mean", dtype, device)
        self.std = _per_channel(std, 1.0, channels, "std", dtype, device)
        if bool((self.std <= 0).any()):
            raise ValueError(f"std must be > 0 in every channel, got {std!r}")
        low, high = check_finite(value_range, "value_range")
        if not low < high:
            raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
        self.low, self.high = float(low), float(high)

    def to_model(self, value: Tensor) -> Tensor:
        """Value space → model space."""
        return (value - self.mean) / self.std

    def to_value(self, model: Tensor) -> Tensor:
        """Model space → value space."""
        return model * self.std + self.mean

    def model_bounds(self) -> tuple[Tensor, Tensor]:
        """Per-channel bounds of the valid range in model space, shape (1, C, 1, 1) each."""
        return self.to_model(torch.full_like(self.mean, self.low)), self.to_model(
            torch.full_like(self.mean, self.high)
        )

    def clamp_model(self, model: Tensor) -> Tensor:
        """Clamp a model-space image to the valid range."""
        low, high = self.model_bounds()
        return torch.maximum(torch.minimum(model, high), low)


def _per_channel(
    value: Sequence[float] | float | None,
    default: float,
    channels: int,
    name: str,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    check_finite(value, name)
    if value is None:
        values = [default] * channels
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        values = [float(value)] * channels
    else:
        values = [float(v) for v in (value.tolist() if isinstance(value, Tensor) else value)]
        if len(values) != channels:
            raise ValueError(
                f"{name} has {len(values)} entries but the images have {channels} channels"
            )
    return torch.tensor(values, dtype=dtype, device=device).view(1, channels, 1, 1)


def spectrum_scale(height: int, width: int, decay: float = 1.0) -> Tensor:
    """The 1/f weights of the ``rfft2`` coefficients of an ``height × width`` image.

    ``w = 1 / max(|f| · max(H, W), 1) ** decay`` with ``|f|`` the radial frequency in cycles
    per pixel, divided by its root mean square so that a unit-variance white parameter renders
    to roughly unit-variance pixels whatever the image size.

    Returns
    -------
    Tensor of shape (H, W // 2 + 1), float64

    Examples
    --------
    >>> s = spectrum_scale(8, 8)
    >>> tuple(s.shape), bool(s[0, 0] == s.max())
    ((8, 5), True)
    """
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    radius = torch.sqrt(fy**2 + fx**2) * max(height, width)
    weights = 1.0 / radius.clamp(min=1.0) ** decay
    return weights / weights.pow(2).mean().sqrt()


class ImageParam:
    """One batch of images, parametrised for optimisation.

    Parameters
    ----------
    init : Tensor of shape (N, C, H, W)
        Initial images in model space.
    kind : {"pixel", "fft"}
        Parametrisation.
    decorrelate : bool
        Mix colours with :data:`COLOR_CORRELATION` (3-channel images only).
    value_range : ValueRange
        Normalisation and valid range.
    clamp : bool
        Keep the image in the valid range (projection for plain pixels, sigmoid otherwise).
    decay : float
        Exponent of the 1/f spectrum weights (``"fft"`` only).
    """

    def __init__(
        self,
        init: Tensor,
        kind: str,
        decorrelate: bool,
        value_range: ValueRange,
        clamp: bool,
        decay: float = 1.0,
    ) -> None:
        self.kind = kind
        self.decorrelate = decorrelate
        self.range = value_range
        self.clamp = clamp
        self.shape = tuple(init.shape)
        height, width = self.shape[-2:]
        dtype, device = init.dtype, init.device
        self.direct = kind == "pixel" and not decorrelate
        self.scale = spectrum_scale(height, width, decay).to(dtype=dtype, device=device)
        mix = COLOR_CORRELATION / COLOR_CORRELATION.norm(dim=0).max()
        self.mix = mix.to(dtype=dtype, device=device)
        with torch.no_grad():
            tensor = self._from_model(init.detach())
        # Dense row-major storage whatever the input's layout (a channels-last start made the
        # fused Adam kernel pair parameters and gradients in different orders).
        self.tensor = tensor.clone(memory_format=torch.contiguous_format).requires_grad_(True)

    # --- rendering -------------------------------------------------------------------------
    def _squash(self, raw: Tensor) -> Tensor:
        if not self.clamp:
            return raw + 0.5 * (self.range.low + self.range.high)
        return self.range.low + (self.range.high - self.range.low) * torch.sigmoid(raw)

    def _unsquash(self, value: Tensor) -> Tensor:
        if not self.clamp:
            return value - 0.5 * (self.range.low + self.range.high)
        span = self.range.high - self.range.low
        unit = ((value - self.range.low) / span).clamp(_EPS, 1 - _EPS)
        return torch.log(unit) - torch.log1p(-unit)

    def _mix_colours(self, x: Tensor, inverse: bool = False) -> Tensor:
        matrix = self.mix
        if inverse:  # an ill-conditioned step: always in float64, whatever the image dtype
            matrix = torch.linalg.inv(self.mix.double()).to(self.mix.dtype)
        return torch.einsum("ij,njhw->nihw", matrix, x)

    def _from_model(self, model: Tensor) -> Tensor:
        if self.direct:
            return self.range.clamp_model(model) if self.clamp else model.clone()
        raw = self._unsquash(self.range.to_value(model))
        if self.decorrelate:
            raw = self._mix_colours(raw, inverse=True)
        if self.kind == "fft":
            spectrum = torch.fft.rfft2(raw, norm="ortho") / self.scale
            return torch.view_as_real(spectrum).contiguous()
        return raw

    def render(self) -> Tensor:
        """The current images in model space, shape (N, C, H, W), differentiable."""
        if self.direct:
            return self.tensor
        raw = self.tensor
        if self.kind == "fft":
            spectrum = torch.view_as_complex(raw) * self.scale
            raw = torch.fft.irfft2(spectrum, s=self.shape[-2:], norm="ortho")
        if self.decorrelate:
            raw = self._mix_colours(raw)
        return self.range.to_model(self._squash(raw))

    def result(self) -> Tensor:
        """The current images, detached and clamped to the valid range when ``clamp``."""
        with torch.no_grad():
            image = self.render().detach().clone()
            return self.range.clamp_model(image) if self.clamp else image

    # --- per-step operations ---------------------------------------------------------------
    def smooth_gradient(self, grad: Tensor, factor: float, variant: str) -> Tensor:
        """Fourier gradient smoothing of the parameter's gradient (DNNBrain's ``factor``)."""
        if self.kind != "fft":
            return fourier_smooth(grad, factor, variant)
        height, width = self.shape[-2:]
        weights = fourier_filter(height, width, factor, variant).to(grad.device, grad.dtype)
        return grad * weights[:, : width // 2 + 1, None]

    def blur_(self, sigma: float) -> None:
        """Gaussian-blur the parameter in place, each colour channel in 2-D."""
        with torch.no_grad():
            if self.kind == "fft":
                height, width = self.shape[-2:]
                fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
                fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
                transfer = torch.exp(-2 * math.pi**2 * sigma**2 * (fy**2 + fx**2))
                self.tensor.mul_(transfer.to(self.tensor)[..., None])
            else:
                self.tensor.copy_(gaussian_blur(self.tensor, sigma))

    def project_(self) -> None:
        """Put plain pixels back into the valid range (other parametrisations need nothing)."""
        if self.direct and self.clamp:
            with torch.no_grad():
                self.tensor.copy_(self.range.clamp_model(self.tensor))


def random_images(
    n: int,
    size: int | tuple[int, int] = 32,
    channels: int = 3,
    kind: str = "grey",
    seed: int = 0,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random initial images for :class:`SynthesisImage`, in model space.

    Parameters
    ----------
    n : int
        Number of images.
    size : int or (H, W)
        Image size.
    channels : int
        Colour channels.
    kind : {"grey", "uniform"}
        ``"grey"``: mid-range grey plus Gaussian noise of 1 % of the range (Lucid's start,
        good for every parametrisation); ``"uniform"``: uniform noise over the whole range
        (DNNBrain's ``torch.rand`` start, best with ``param="pixel"``).
    seed : int
        Seed; image ``k`` depends only on ``(seed, k)`` and the image shape.
    mean, std : float or sequence of float, optional
        The model's input normalisation (model = (value − mean) / std); default none.
    value_range : (low, high)
        Valid unnormalised values.
    dtype, device
        Of the result.

    Returns
    -------
    Tensor of shape (n, channels, H, W)

    Examples
    --------
    >>> x = random_images(2, 8)
    >>> tuple(x.shape), bool(x.min() >= 0) and bool(x.max() <= 1)
    ((2, 3, 8, 8), True)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    height, width = (size, size) if isinstance(size, int) else size
    if kind not in ("grey", "uniform"):
        raise ValueError(f"kind must be 'grey' or 'uniform', got {kind!r}")
    low, high = value_range
    images = []
    for k in range(n):
        generator = torch.Generator().manual_seed(_mix_seed(seed, k))
        if kind == "uniform":
            unit = torch.rand(channels, height, width, generator=generator, dtype=torch.float64)
        else:
            noise = torch.randn(channels, height, width, generator=generator, dtype=torch.float64)
            unit = (0.5 + 0.01 * noise).clamp(0, 1)
        images.append(low + (high - low) * unit)
    value = torch.stack(images).to(dtype=dtype, device=device)
    scale = ValueRange(channels, mean, std, value_range, dtype, value.device)
    return scale.to_model(value)


def _mix_seed(seed: int, k: int) -> int:
    return (int(seed) * 1_000_003 + k * 7919 + 12345) % (2**63 - 1)
