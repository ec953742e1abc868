"""OccluderDiscrepancyMapping options (issue 11): Captum window form, keepdim, finite baselines."""

from __future__ import annotations

import math

import pytest
import torch
from captum.attr import LayerAttribution
from torch import nn

from dnnbrain_captum import OccluderDiscrepancyMapping


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).double().eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 14, 13, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("method", ["auto", "full"])
@pytest.mark.parametrize(
    ("window", "stride"),
    [((3, 4, 5), (3, 2, 3)), ((3, 4, 5), (1, 2, 3)), ((3, 4, 5), (2, 3)), ((4, 5), (3, 2, 3))],
)
def test_captum_channel_first_window_and_stride_forms(
    model: nn.Module, images: torch.Tensor, window: tuple, stride: tuple, method: str
) -> None:
    odm = OccluderDiscrepancyMapping(model, "2")
    plain = odm.attribute(images, target=1, sliding_window_shapes=(4, 5), strides=(2, 3))
    captum_form = odm.attribute(
        images, target=1, sliding_window_shapes=window, strides=stride, method=method
    )
    assert captum_form.shape == (2, 6, 3)
    torch.testing.assert_close(captum_form, plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("window", [(1, 4, 5), (4, 4, 5), [2, 3, 3]])
def test_a_channel_first_window_must_cover_every_channel(
    model: nn.Module, images: torch.Tensor, window: tuple
) -> None:
    with pytest.raises(ValueError, match=r"must cover all 3 input channels \(C=3\)"):
        OccluderDiscrepancyMapping(model, "2").attribute(
            images, target=1, sliding_window_shapes=window, strides=2
        )
    with pytest.raises(ValueError, match="channel entry must be an int >= 1"):
        OccluderDiscrepancyMapping(model, "2").attribute(
            images, target=1, sliding_window_shapes=3, strides=(0, 2, 2)
        )


def test_keepdim_gives_captum_layer_attribution_layout(
    model: nn.Module, images: torch.Tensor
) -> None:
    odm = OccluderDiscrepancyMapping(model, "2")
    options = dict(target=0, sliding_window_shapes=(7, 6), strides=(7, 7))
    flat = odm.attribute(images, **options)
    kept = odm.attribute(images, keepdim=True, **options)
    assert flat.shape == (2, 2, 2) and kept.shape == (2, 1, 2, 2)
    torch.testing.assert_close(kept[:, 0], flat, rtol=0, atol=0)
    # Each window's value spread over its 7×7 block of a 14×14 image (nearest neighbour).
    upsampled = LayerAttribution.interpolate(kept, (14, 14))
    assert upsampled.shape == (2, 1, 14, 14)
    for r in range(2):
        for c in range(2):
            block = upsampled[:, 0, 7 * r : 7 * r + 7, 7 * c : 7 * c + 7]
            assert bool((block == flat[:, r, c, None, None]).all())


@pytest.mark.parametrize(
    "baselines",
    [math.nan, math.inf, -math.inf, torch.tensor([0.0, math.nan, 0.0]).view(1, 3, 1, 1)],
    ids=["nan", "inf", "-inf", "tensor-with-nan"],
)
def test_non_finite_baselines_are_refused(
    model: nn.Module, images: torch.Tensor, baselines: object
) -> None:
    with pytest.raises(ValueError, match="baselines.*finite"):
        OccluderDiscrepancyMapping(model, "2").attribute(
            images, target=0, sliding_window_shapes=3, strides=3, baselines=baselines
        )


class _Viewing(nn.Module):
    """A classifier that flattens with ``view``: channels-last batches are rejected."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


def test_class_full_path_retries_a_model_that_rejects_channels_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch.manual_seed(0)
    net = _Viewing().double().eval()
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with caplog.at_level("DEBUG", logger="dnnbrain_captum.attr.occlusion"):
        grid = OccluderDiscrepancyMapping(net).attribute(
            x, target=1, sliding_window_shapes=2, strides=2, method="full"
        )
    assert "rejected a channels-last batch" in caplog.text
    clean = net(x)[:, 1]
    for r in range(3):
        for c in range(3):
            occluded = x.clone()
            occluded[:, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = 0.0
            torch.testing.assert_close(grid[:, r, c], clean - net(occluded)[:, 1])
