"""MinimalComponentImage: a known-pattern model, digits, exact reconstruction, bad input."""

from __future__ import annotations

import pytest
import torch

from dnnbrain_captum import MinimalComponentImage, digits_cnn, digits_images
from tests.helpers.region_models import PatternModel, orthogonal_patterns


def _pattern_image() -> torch.Tensor:
    """16×16 grey image: each 4×4 tile = 0.5 + a·P + b·Q, a and b random per tile."""
    p, q = orthogonal_patterns()
    generator = torch.Generator().manual_seed(5)
    a = 1.0 + torch.rand(16, generator=generator)  # positive: the detector sees every tile
    b = 3.0 * torch.randn(16, generator=generator)  # larger variance: PCA's first axis
    centred = a - a.mean()
    b = b - (b @ centred) / (centred @ centred) * centred  # uncorrelated: PCA axes are P and Q
    tiles = 0.5 + a[:, None, None] * p + b[:, None, None] * q  # (16, 4, 4)
    return tiles.view(4, 4, 4, 4).permute(0, 2, 1, 3).reshape(1, 1, 16, 16)


def _tile_projections(image: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    tiles = image.view(4, 4, 4, 4).permute(0, 2, 1, 3).reshape(16, 4, 4)
    return (tiles * pattern).sum((1, 2))


@pytest.mark.parametrize("decomposition", ["pca", "ica"])
def test_keeps_the_pattern_the_unit_detects(decomposition: str) -> None:
    p, q = orthogonal_patterns()
    x = _pattern_image()
    # The data have rank 2; ICA is asked for those 2 sources (PCA gets its default full rank).
    n_components = 2 if decomposition == "ica" else None
    out = MinimalComponentImage(PatternModel(p), "detector").attribute(
        x,
        target=0,
        patch_size=4,
        decomposition=decomposition,
        n_components=n_components,
        search_criterion="threshold",
    )
    torch.testing.assert_close(out.full_reconstruction, x, atol=1e-4, rtol=0)
    assert int(out.n_selected[0]) == 1
    assert float(out.activation[0]) >= 0.9 * float(out.original_activation[0])
    if decomposition == "ica":
        return  # 16 tiles are too few for FastICA to isolate P exactly
    minimal = out.images[0, 0]
    # The kept component carries P exactly; the Q content is gone (constant over tiles).
    torch.testing.assert_close(_tile_projections(minimal, p), _tile_projections(x[0, 0], p))
    assert float(_tile_projections(minimal, q).std()) < 1e-3
    torch.testing.assert_close(out.activation, out.original_activation, rtol=1e-4, atol=1e-4)


def test_removing_the_detected_pattern_lowers_the_activation() -> None:
    p, q = orthogonal_patterns()
    x = _pattern_image()
    # The Q detector must keep the Q component; PCA puts it first (largest variance).
    out = MinimalComponentImage(PatternModel(q), "detector").attribute(
        x, target=0, patch_size=4, search_criterion="removal"
    )
    assert int(out.n_selected[0]) == 1
    assert bool(out.selected[0, 0])


def test_digits_patches_and_pixels() -> None:
    images, labels = digits_images(n=2)
    model = digits_cnn()
    out = MinimalComponentImage(model).attribute(
        images, target=labels, patch_size=4, search_criterion="threshold"
    )
    assert out.selected.shape == (2, 48)  # 64 tiles of 48 values: full rank 48
    torch.testing.assert_close(out.full_reconstruction, images, atol=1e-4, rtol=0)
    assert bool((out.activation >= 0.9 * out.original_activation).all())
    assert bool((out.n_selected <= 8).all()), out.n_selected
    with torch.no_grad():
        assert torch.equal(model(out.images).argmax(1), labels)
    colours = MinimalComponentImage(model).attribute(images, target=labels, sampling="pixels")
    assert colours.selected.shape == (2, 3)  # colour axes
    torch.testing.assert_close(colours.full_reconstruction, images, atol=1e-4, rtol=0)


def test_batched_equals_one_candidate_at_a_time() -> None:
    images, labels = digits_images(n=2)
    model = digits_cnn()
    kwargs = dict(target=labels, patch_size=8, search_criterion="fitting_curve")
    a = MinimalComponentImage(model).attribute(images, **kwargs)
    b = MinimalComponentImage(model).attribute(images, perturbations_per_eval=1, **kwargs)
    assert torch.equal(a.selected, b.selected)
    torch.testing.assert_close(a.images, b.images)


def test_image_size_not_a_multiple_of_the_patch() -> None:
    x = torch.rand(1, 3, 13, 11, generator=torch.Generator().manual_seed(0))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU()).eval()
    out = MinimalComponentImage(model, "1").attribute(x, target=0, patch_size=4)
    assert out.images.shape == x.shape
    torch.testing.assert_close(out.full_reconstruction, x, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"decomposition": "nmf"}, ValueError, "decomposition must be one of"),
        ({"sampling": "rows"}, ValueError, "sampling must be one of"),
        ({"activation_ratio": 1.0}, ValueError, "strictly between 0 and 1"),
        ({"patch_size": 0}, ValueError, "patch_size must be an int >= 1"),
        ({"n_components": 1}, ValueError, "single component"),
        ({"n_components": 500}, ValueError, "components are possible"),
        ({"n_components": 2.5}, TypeError, "n_components must be None or an int"),
        ({"sampling": "pixels"}, ValueError, "single component"),  # grey: one colour axis
        ({"search_criterion": "min"}, ValueError, "search_criterion must be one of"),
    ],
)
def test_bad_input(kwargs: dict, error: type, match: str) -> None:
    p, _ = orthogonal_patterns()
    with pytest.raises(error, match=match):
        MinimalComponentImage(PatternModel(p), "detector").attribute(
            _pattern_image(), target=0, **{"patch_size": 4, **kwargs}
        )


@pytest.mark.parametrize("decomposition", ["pca", "ica"])
@pytest.mark.parametrize("patch_size", [2, 4, 8])
def test_default_components_are_valid_for_every_decomposition_and_tile(
    decomposition: str, patch_size: int
) -> None:
    # Issue 11: the "full rank" default was one too many for ICA on the digits' 4×4 tiles (the
    # tiles span fewer dimensions than min(L − 1, D)); the default is the numerical rank.
    images, labels = digits_images(n=2)
    out = MinimalComponentImage(digits_cnn()).attribute(
        images, target=labels, decomposition=decomposition, patch_size=patch_size
    )
    assert out.selected.shape[1] >= 2
    torch.testing.assert_close(out.full_reconstruction, images, atol=1e-4, rtol=0)
