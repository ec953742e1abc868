"""MinimalParcelImage: region model, digits model, keyword segmentation, batching, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import segmentation as skseg
from torch import nn

from dnnbrain_captum import MinimalParcelImage, digits_cnn, digits_images
from dnnbrain_captum.attr._search import TargetScorer, plateau_index
from tests.helpers.region_models import RegionModel


def _grid(size: int = 16, block: int = 4) -> torch.Tensor:
    rows = torch.arange(size) // block
    return rows[:, None] * (size // block) + rows[None, :]


def _window() -> torch.Tensor:
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[4:12, 4:12] = True
    return inside


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    images, labels = digits_images(n=3)
    return digits_cnn(), images, labels


@pytest.mark.parametrize("criterion", ["max", "fitting_curve", "threshold", "removal"])
def test_region_model_keeps_exactly_the_region(criterion: str) -> None:
    x = 0.2 + 0.8 * torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = MinimalParcelImage(RegionModel(), "detector").attribute(
        x,
        target=0,
        feature_mask=_grid(),
        search_criterion=criterion,
        activation_criterion="mean",
        perturbations_per_eval=7,
    )
    window = _window().expand(2, 16, 16)
    assert torch.equal(out.masks, window)  # the 4 parcels of the window, nothing else
    assert out.n_selected.tolist() == [4, 4] and out.n_parcels.tolist() == [16, 16]
    torch.testing.assert_close(out.images[:, :, window[0]], x[:, :, window[0]])
    assert float(out.images[:, :, ~window[0]].abs().max()) == 0.0  # default fill 0.0
    torch.testing.assert_close(out.activation, out.original_activation)


def test_mean_fill_and_tensor_fill() -> None:
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    model = RegionModel()
    mean = MinimalParcelImage(model, "detector").attribute(
        x, target=0, feature_mask=_grid(), baselines="mean", search_criterion="removal"
    )
    outside = ~mean.masks[0]
    expected = x.mean(dim=(2, 3))[0][:, None].expand(3, int(outside.sum()))
    torch.testing.assert_close(mean.images[0][:, outside], expected)
    fill = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)
    out = MinimalParcelImage(model, "detector").attribute(
        x, target=0, feature_mask=_grid(), baselines=fill, search_criterion="removal"
    )
    assert float(out.images[0, 2][~out.masks[0]].max()) == pytest.approx(0.3)


def test_activation_criteria_are_vector_statistics() -> None:
    model = nn.Sequential(nn.Identity())
    out = torch.tensor([[3.0, -4.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    expected = {"max": 3.0, "mean": -0.25, "median": 0.0, "L1": 7.0, "L2": 5.0}
    for criterion, value in expected.items():
        scorer = TargetScorer(model, model[0], 0, criterion, None, 1)
        assert float(scorer(out, torch.tensor([0]))) == pytest.approx(value)


def test_plateau_index_literals() -> None:
    assert plateau_index(torch.tensor([1.0, 2.5, 3.0, 3.0, 3.0, 3.0])) == 2
    assert plateau_index(torch.tensor([2.0, 2.0, 2.0, 2.0])) == 0  # flat: one element
    assert plateau_index(torch.tensor([5.0, 1.0])) == 0  # short curve: arg-max
    # A late bump above a saturated curve: the plateau is the fitted level, not the bump.
    # Fitted c ≈ 0, A ≈ 10.2: the level c + 0.95·A ≈ 9.7 is first reached by the first 10.0.
    curve = torch.tensor([0.0, 5.0, 8.0, 9.5, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.4])
    assert plateau_index(curve) == 4


def test_ties_go_to_the_fewest_parcels() -> None:
    # Parcels outside the window add exactly nothing: every prefix from 4 on ties.
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    out = MinimalParcelImage(RegionModel()).attribute(
        x, target=0, feature_mask=_grid(), search_criterion="max"
    )
    assert int(out.n_selected[0]) == 4


def test_digits_removal_minimal_images(digits: tuple) -> None:
    model, images, labels = digits
    images, labels = images[:2], labels[:2]
    out = MinimalParcelImage(model).attribute(
        images,
        target=labels,
        segmentation="slic",
        segmentation_kwargs={"n_segments": 30},
        search_criterion="removal",
    )
    assert bool((out.activation >= 0.9 * out.original_activation).all())
    assert bool((out.n_selected <= 0.35 * out.n_parcels).all()), out.n_selected
    with torch.no_grad():
        assert torch.equal(model(out.images).argmax(1), labels)
        torch.testing.assert_close(
            model(out.images)[torch.arange(2), labels], out.activation, rtol=1e-4, atol=1e-4
        )
        # Removing any one more parcel drops the logit below 0.9 × the original.
        for k in range(2):
            for parcel in torch.unique(out.labels[k][out.masks[k]]).tolist():
                keep = out.masks[k] & (out.labels[k] != parcel)
                smaller = torch.where(keep, images[k], torch.zeros(()))
                logit = model(smaller[None])[0, labels[k]]
                assert float(logit) < 0.9 * float(out.original_activation[k])


def test_digits_threshold_keeps_ninety_percent(digits: tuple) -> None:
    model, images, labels = digits
    out = MinimalParcelImage(model).attribute(
        images, target=labels, search_criterion="threshold", baselines="mean"
    )
    assert bool((out.activation >= 0.9 * out.original_activation).all())
    assert bool((out.n_selected < out.n_parcels).all())


def test_batched_search_equals_one_candidate_at_a_time(digits: tuple) -> None:
    model, images, labels = digits
    for criterion, n in (("fitting_curve", 2), ("removal", 1)):
        kwargs = dict(
            target=labels[:n],
            segmentation="slic",
            segmentation_kwargs={"n_segments": 12},
            search_criterion=criterion,
        )
        batched = MinimalParcelImage(model).attribute(images[:n], **kwargs)
        single = MinimalParcelImage(model).attribute(images[:n], perturbations_per_eval=1, **kwargs)
        assert torch.equal(batched.masks, single.masks)
        torch.testing.assert_close(batched.activation, single.activation)


def _direct(image: torch.Tensor, method, **kwargs) -> int:
    array = image.permute(1, 2, 0).double().numpy()
    array = (array - array.min()) / (array.max() - array.min())
    return len(np.unique(method(array, **kwargs)))


def test_slic_and_quickshift_take_keyword_arguments(digits: tuple) -> None:
    model, images, labels = digits
    image = images[:1]
    counts = []
    for n_segments in (10, 40):
        out = MinimalParcelImage(model).attribute(
            image,
            target=labels[:1],
            segmentation="slic",
            segmentation_kwargs={"n_segments": n_segments},
            max_parcels=1,
            search_criterion="max",
        )
        direct = _direct(
            image[0], skseg.slic, n_segments=n_segments, compactness=10, sigma=1, start_label=0
        )
        assert int(out.n_parcels[0]) == direct
        counts.append(int(out.n_parcels[0]))
    assert counts[1] > 2 * counts[0]
    quick = MinimalParcelImage(model).attribute(
        image, target=labels[:1], segmentation="quickshift", max_parcels=1, search_criterion="max"
    )
    assert int(quick.n_parcels[0]) == _direct(
        image[0], skseg.quickshift, kernel_size=3, max_dist=6, ratio=0.5
    )
    fine = MinimalParcelImage(model).attribute(
        image,
        target=labels[:1],
        segmentation="quickshift",
        segmentation_kwargs={"max_dist": 2},
        max_parcels=1,
        search_criterion="max",
    )
    assert int(fine.n_parcels[0]) > 5 * int(quick.n_parcels[0])  # positional order: 1 per pixel
    felz = MinimalParcelImage(model).attribute(
        image, target=labels[:1], max_parcels=1, search_criterion="max"
    )
    assert int(felz.n_parcels[0]) == _direct(
        image[0], skseg.felzenszwalb, scale=100, sigma=0.5, min_size=50
    )


def test_grey_images_segment() -> None:
    x = torch.zeros(1, 1, 16, 16)
    x[..., 4:12, 4:12] = 1.0
    out = MinimalParcelImage(RegionModel(in_channels=1), "detector").attribute(
        x,
        target=0,
        segmentation="slic",
        segmentation_kwargs={"n_segments": 4},
        activation_criterion="mean",
    )
    assert int(out.n_parcels[0]) >= 2
    assert bool(out.masks[0][_window()].all())


def test_non_positive_original_warns() -> None:
    x = torch.rand(1, 3, 16, 16)
    with pytest.warns(UserWarning, match="original activation is not positive"):
        out = MinimalParcelImage(RegionModel(), "detector").attribute(
            x, target=1, feature_mask=_grid(), search_criterion="removal"
        )
    assert bool(out.masks.all())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"segmentation": "watershed"}, ValueError, "segmentation must be one of"),
        ({"feature_mask": torch.zeros(15, 16, dtype=torch.long)}, ValueError, "feature_mask has"),
        ({"feature_mask": torch.zeros(3, 16, 16, dtype=torch.long)}, ValueError, "feature_mask"),
        ({"feature_mask": torch.zeros(16, 16)}, TypeError, "integer parcel labels"),
        ({"feature_mask": torch.zeros(16, 16, dtype=torch.long)}, ValueError, "single parcel"),
        ({"activation_ratio": 1.5}, ValueError, "strictly between 0 and 1"),
        ({"activation_ratio": 0.0}, ValueError, "strictly between 0 and 1"),
        ({"search_criterion": "fitting curve"}, ValueError, "search_criterion must be one of"),
        ({"activation_criterion": "l2"}, ValueError, "activation_criterion must be one of"),
        ({"segmentation_kwargs": {"n_segment": 5}}, TypeError, "bad segmentation_kwargs"),
        ({"baselines": "black"}, ValueError, "baselines must be"),
        ({"perturbations_per_eval": 0}, ValueError, "perturbations_per_eval"),
        ({"max_parcels": 0}, ValueError, "max_parcels"),
        ({"candidates_per_step": 0}, ValueError, "candidates_per_step"),
    ],
)
def test_bad_input(kwargs: dict, error: type, match: str) -> None:
    x = torch.rand(2, 3, 16, 16)
    options = {"segmentation": "slic", **kwargs}
    with pytest.raises(error, match=match):
        MinimalParcelImage(RegionModel(), "detector").attribute(x, target=0, **options)


def test_uniform_image_is_a_single_parcel() -> None:
    with pytest.raises(ValueError, match=r"image\(s\) \[0\] consist of a single parcel"):
        MinimalParcelImage(RegionModel(), "detector").attribute(
            torch.full((1, 3, 16, 16), 0.5), target=0
        )
