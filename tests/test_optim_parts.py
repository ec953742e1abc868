"""Building blocks of activation maximisation against literal oracles and hand values."""

from __future__ import annotations

import cmath
import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from dnnbrain_captum.optim import (
    Jitter,
    Pad,
    RandomRotation,
    RandomScale,
    fourier_filter,
    fourier_smooth,
    gaussian_blur,
    l1_norm,
    l2_norm,
    random_images,
    standard_transforms,
    total_variation,
)
from dnnbrain_captum.optim._param import ImageParam, ValueRange


def _literal_filter(h: int, w: int, factor: float, offset: int) -> np.ndarray:
    """DNNBrain §3.4 written out index by index: t = 1/max(1, (tw² + th²)^factor), F = t/mean t."""
    t = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            th = min(i, h - offset - i)
            tw = min(j, w - offset - j)
            t[i, j] = 1.0 / max(1.0, (tw * tw + th * th) ** factor)
    return t / t.mean()


def _literal_dft_smooth(g: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Slow 2-D DFT, multiply each coefficient by the real filter, inverse DFT, real part."""
    h, w = g.shape
    spectrum = np.zeros((h, w), dtype=complex)
    for k in range(h):
        for ell in range(w):
            total = 0j
            for m in range(h):
                for n in range(w):
                    total += g[m, n] * cmath.exp(-2j * math.pi * (k * m / h + ell * n / w))
            spectrum[k, ell] = total * weights[k, ell]
    out = np.zeros((h, w))
    for m in range(h):
        for n in range(w):
            total = 0j
            for k in range(h):
                for ell in range(w):
                    total += spectrum[k, ell] * cmath.exp(2j * math.pi * (k * m / h + ell * n / w))
            out[m, n] = (total / (h * w)).real
    return out


@pytest.mark.parametrize(("variant", "offset"), [("fftfreq", 0), ("dnnbrain", 1)])
@pytest.mark.parametrize(("h", "w"), [(5, 6), (6, 4)])
def test_fourier_filter_matches_the_literal_formula(
    variant: str, offset: int, h: int, w: int
) -> None:
    for factor in (0.25, 0.3, 0.5):
        np.testing.assert_allclose(
            fourier_filter(h, w, factor, variant).numpy(), _literal_filter(h, w, factor, offset)
        )


def test_dnnbrain_filter_reference_values_at_224() -> None:
    # Behaviour file §3.4: F at DC (and index 1) and at (112, 112) for factors 0.25/0.3/0.5.
    for factor, dc, centre in ((0.25, 8.408, 0.6711), (0.3, 12.712, 0.6119), (0.5, 62.141, 0.3959)):
        weights = fourier_filter(224, 224, factor, "dnnbrain")
        assert weights[0, 0].item() == pytest.approx(dc, abs=1e-3)
        assert weights[0, 1].item() == pytest.approx(dc, abs=1e-3)
        assert weights[112, 112].item() == pytest.approx(centre, abs=1e-4)
    # The correct filter is symmetric under k <-> n - k (like a real image's spectrum).
    fixed = fourier_filter(224, 224, 0.3)
    torch.testing.assert_close(fixed[1:, 1:], fixed[1:, 1:].flip(0, 1))


def test_fourier_smoothing_matches_a_slow_dft_oracle() -> None:
    g = np.random.default_rng(0).standard_normal((5, 6))
    grad = torch.from_numpy(g).view(1, 1, 5, 6)
    for factor in (0.25, 0.5):
        oracle = _literal_dft_smooth(g, _literal_filter(5, 6, factor, 0))
        np.testing.assert_allclose(fourier_smooth(grad, factor)[0, 0].numpy(), oracle, atol=1e-10)
    # DNNBrain's variant: torch.rfft/irfft (two-sided) keep the first w//2 + 1 columns of the
    # filtered spectrum before the complex-to-real inverse (behaviour file §3.4).
    weights = _literal_filter(5, 6, 0.3, 1)
    faithful = np.fft.irfft2(np.fft.rfft2(g) * weights[:, : 6 // 2 + 1], s=(5, 6))
    np.testing.assert_allclose(
        fourier_smooth(grad, 0.3, "dnnbrain")[0, 0].numpy(), faithful, atol=1e-12
    )
    assert fourier_smooth(grad, 0.0) is grad


def test_gaussian_blur_matches_scipy_per_channel() -> None:
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sigma in (0.3, 1.0, 2.5):
        ours = gaussian_blur(x, sigma).numpy()
        for n in range(2):
            for c in range(3):
                reference = scipy.ndimage.gaussian_filter(
                    x[n, c].numpy(), sigma, mode="nearest", truncate=4.0
                )
                np.testing.assert_allclose(ours[n, c], reference, atol=1e-12)


def test_regularisers_hand_values() -> None:
    x = torch.tensor([[[[1.0, -2.0], [0.0, 2.0]]], [[[3.0, 3.0], [3.0, 3.0]]]])
    torch.testing.assert_close(l1_norm(x), torch.tensor([5.0, 12.0]))
    torch.testing.assert_close(l2_norm(x), torch.tensor([3.0, 6.0]))
    # rows: |0-1| + |2+2| = 5; cols: |-2-1| + |2-0| = 5.
    torch.testing.assert_close(total_variation(x), torch.tensor([10.0, 0.0]))


def test_transforms_pinned_values() -> None:
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(Pad(1)(torch.ones(1, 3, 2, 2), gen), torch.ones(1, 3, 4, 4))
    constant = Pad(1, mode="constant", value=0.5)(torch.ones(1, 1, 2, 2), gen)
    assert constant[0, 0, 0].tolist() == [0.5] * 4 and constant[0, 0, 1].tolist() == [
        0.5,
        1.0,
        1.0,
        0.5,
    ]
    x = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(RandomRotation([90.0])(x, gen), torch.rot90(x, 1, (2, 3)))
    assert RandomScale([0.5])(x, gen).shape == (1, 1, 2, 2)
    crops = {tuple(Jitter(2)(x, gen)[0, 0, 0, :1].tolist()) for _ in range(30)}
    assert crops <= {(0.0,), (1.0,), (2.0,), (4.0,), (5.0,), (6.0,), (8.0,), (9.0,), (10.0,)}
    assert len(crops) > 3
    assert [type(t).__name__ for t in standard_transforms(32)] == [
        "Pad",
        "Jitter",
        "RandomScale",
        "RandomRotation",
        "Jitter",
    ]
    with pytest.raises(ValueError, match="Pad width must be an int >= 0"):
        Pad(-1)
    with pytest.raises(ValueError, match="RandomScale needs positive scales"):
        RandomScale([0.0])


@pytest.mark.parametrize("kind", ["pixel", "fft"])
@pytest.mark.parametrize("decorrelate", [False, True])
def test_parametrisations_render_their_initial_images(kind: str, decorrelate: bool) -> None:
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    init = random_images(2, (6, 7), kind="uniform", mean=mean, std=std, dtype=torch.float64)
    scale = ValueRange(3, mean, std, (0.0, 1.0), torch.float64, init.device)
    param = ImageParam(init, kind, decorrelate, scale, clamp=True)
    torch.testing.assert_close(param.render(), init, atol=1e-9, rtol=0)
    assert param.tensor.requires_grad and param.tensor.is_leaf


def test_fft_parametrisation_prefers_low_frequencies() -> None:
    """A unit step in every spectral coefficient moves low frequencies more than high ones."""
    init = random_images(1, 16, dtype=torch.float64)
    scale = ValueRange(3, None, None, (0.0, 1.0), torch.float64, init.device)
    param = ImageParam(init, "fft", False, scale, clamp=False)
    rendered = param.render()
    (grad,) = torch.autograd.grad(rendered[0, 0, 0, 0], [param.tensor])
    magnitude = grad[0, 0].norm(dim=-1)
    assert magnitude[0, 0] > 4 * magnitude[8, 8]


def test_redirected_relu_gradient_literals() -> None:
    from dnnbrain_captum.optim._relu import redirected_relu

    relu = torch.nn.Sequential(torch.nn.ReLU())
    # Example 0 has an active unit: the ordinary gradient. Example 1 is silent everywhere:
    # the gradient passes, except where it would push a negative input further down.
    x = torch.tensor([[1.0, -1.0, -2.0], [-1.0, -2.0, -3.0]], requires_grad=True)
    upstream = torch.tensor([[-1.0, -1.0, 2.0], [-1.0, 2.0, -3.0]])
    with redirected_relu(relu):
        out = relu(x)
        (grad,) = torch.autograd.grad(out, x, upstream)
    torch.testing.assert_close(out, x.clamp(min=0))
    torch.testing.assert_close(grad, torch.tensor([[-1.0, 0.0, 0.0], [-1.0, 0.0, -3.0]]))
    assert not relu[0]._forward_hooks and not relu[0]._forward_pre_hooks
    plain = torch.autograd.grad(relu(x), x, upstream)[0]
    torch.testing.assert_close(plain, torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_redirected_relu_works_with_in_place_relus() -> None:
    from dnnbrain_captum.optim._relu import redirected_relu

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.ReLU(inplace=True))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(-10.0)  # silent on [0, 1] images
    x = torch.rand(1, 1, 3, 3, requires_grad=True)
    with redirected_relu(model):
        (grad,) = torch.autograd.grad(-model(x).mean(), x)
    torch.testing.assert_close(grad, torch.full_like(x, -1 / 9))


def test_diversity_penalty_literals() -> None:
    from dnnbrain_captum.optim import diversity_penalty

    a = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (2, 1, 2): Gram matrices [[0.5]] each
    torch.testing.assert_close(diversity_penalty(a), torch.tensor([1.0, 1.0]))
    b = torch.zeros(3, 2, 1)
    b[0, 0] = b[1, 1] = 1.0
    b[2, :, 0] = torch.tensor([1.0, 1.0])  # Gram: e00, e11, all-ones/… (cosines 0, 1/2, 1/2)
    torch.testing.assert_close(diversity_penalty(b), torch.tensor([0.25, 0.25, 0.5]))
    torch.testing.assert_close(diversity_penalty(b[:1]), torch.zeros(1))
