"""Upsampled activation maps and occluder discrepancy maps: literal values and oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dnnbrain_captum import OccluderDiscrepancyMapping, UpsamplingActivationMapping
from dnnbrain_captum.attr.occlusion import occlusion_grid_shape
from dnnbrain_captum.models import digits_cnn, digits_images
from tests.helpers.models import SumConv, TinyConvNet

IMAGE = torch.arange(9.0).view(1, 1, 3, 3)


def test_upsampling_nearest_literal() -> None:
    maps = UpsamplingActivationMapping(SumConv(), "conv").attribute(
        IMAGE, target=0, interpolate_mode="nearest"
    )
    expected = torch.tensor([[8.0, 8.0, 12.0], [8.0, 8.0, 12.0], [20.0, 20.0, 24.0]])
    torch.testing.assert_close(maps[0], expected)


def test_upsampling_threshold_floors_below_quantile_like_numpy() -> None:
    maps = UpsamplingActivationMapping(SumConv(), "conv").attribute(
        IMAGE, target=0, interpolate_mode="nearest", threshold=0.5
    )
    expected = torch.tensor([[12.0, 12.0, 12.0], [12.0, 12.0, 12.0], [20.0, 20.0, 24.0]])
    torch.testing.assert_close(maps[0], expected)
    binary = UpsamplingActivationMapping(SumConv(), "conv").attribute(
        IMAGE, target=0, interpolate_mode="nearest", threshold=0.5, binarize=True
    )
    raw_map = torch.tensor([[8.0, 8.0, 12.0], [8.0, 8.0, 12.0], [20.0, 20.0, 24.0]])
    torch.testing.assert_close(binary[0], (raw_map >= 12).float())
    model = digits_cnn()
    x, _ = digits_images(n=2)
    raw = UpsamplingActivationMapping(model, "conv4").attribute(x, target=7)
    floored = UpsamplingActivationMapping(model, "conv4").attribute(x, target=7, threshold=0.58)
    for k in range(2):
        reference = np.clip(raw[k].numpy(), np.percentile(raw[k].numpy(), 58), None)
        np.testing.assert_allclose(floored[k].numpy(), reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic", "area"])
def test_upsampling_equals_interpolated_layer_output(mode: str) -> None:
    model = digits_cnn()
    x, _ = digits_images(n=3)
    maps = UpsamplingActivationMapping(model, "conv5_relu").attribute(
        x, target=[1, 2, 3], interpolate_mode=mode
    )
    with torch.no_grad():
        layer = model.features[:12](x)[torch.arange(3), torch.tensor([1, 2, 3])]
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    reference = nn.functional.interpolate(layer[:, None], size=(32, 32), mode=mode, **kwargs)
    torch.testing.assert_close(maps, reference[:, 0])


def test_occlusion_literal_grid() -> None:
    grid = OccluderDiscrepancyMapping(SumConv(), "conv").attribute(
        IMAGE, target=0, sliding_window_shapes=(2, 2), strides=(1, 1)
    )
    torch.testing.assert_close(grid[0], torch.tensor([[6.0, 7.5], [10.5, 12.0]]))


def test_occlusion_grid_shape_is_floor_of_full_windows() -> None:
    assert occlusion_grid_shape((224, 224), (11, 11), (2, 2)) == (107, 107)
    assert occlusion_grid_shape((224, 224), (15, 15), (4, 4)) == (53, 53)
    assert occlusion_grid_shape((8, 8), (3, 3), (2, 2)) == (3, 3)
    assert occlusion_grid_shape((20, 30), (4, 6), (3, 5)) == (6, 5)


def _oracle(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, select, window, stride, fill
) -> torch.Tensor:
    """DNNBrain's way, literally: one window, one full forward, at a time."""
    captured = {}
    handle = layer.register_forward_hook(lambda m, a, o: captured.__setitem__("out", o.clone()))
    rows, cols = occlusion_grid_shape(x.shape[-2:], window, stride)
    result = torch.zeros(x.shape[0], rows, cols, dtype=x.dtype)
    try:
        with torch.no_grad():
            for n in range(x.shape[0]):
                model(x[n : n + 1])
                base = select(captured["out"], n)
                for r in range(rows):
                    for c in range(cols):
                        occluded = x[n : n + 1].clone()
                        top, left = r * stride[0], c * stride[1]
                        patch = fill[n : n + 1] if fill.dim() == 4 else fill
                        occluded[..., top : top + window[0], left : left + window[1]] = (
                            patch[..., top : top + window[0], left : left + window[1]]
                            if fill.dim() == 4
                            else fill
                        )
                        model(occluded)
                        result[n, r, c] = base - select(captured["out"], n)
    finally:
        handle.remove()
    return result


@pytest.mark.parametrize(
    "window,stride,ppe", [((5, 5), (3, 3), 7), ((4, 7), (5, 2), 64), ((32, 32), (1, 1), 1)]
)
def test_occlusion_equals_one_window_oracle(window, stride, ppe) -> None:
    model = digits_cnn().double()
    x = digits_images(n=2)[0].double()
    channels = [3, 11]
    fast = OccluderDiscrepancyMapping(model, "conv3").attribute(
        x,
        target=channels,
        sliding_window_shapes=window,
        strides=stride,
        perturbations_per_eval=ppe,
    )
    slow = _oracle(
        model,
        model.features[6],
        x,
        lambda out, n: out[0, channels[n]].mean(),
        window,
        stride,
        torch.tensor(0.0, dtype=torch.float64),
    )
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)


def test_occlusion_unit_max_and_output_targets_match_oracle() -> None:
    model = TinyConvNet().eval().double()
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    fast = OccluderDiscrepancyMapping(model, "relu2").attribute(
        x, target=2, sliding_window_shapes=3, strides=2, reduction="max", baselines=0.5
    )
    slow = _oracle(
        model,
        model.relu2,
        x,
        lambda out, n: out[0, 2].max(),
        (3, 3),
        (2, 2),
        torch.tensor(0.5, dtype=torch.float64),
    )
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)
    fast = OccluderDiscrepancyMapping(model).attribute(
        x, target=4, sliding_window_shapes=(4, 3), strides=(2, 3)
    )
    slow = _oracle(
        model,
        model.fc,
        x,
        lambda out, n: out[0, 4],
        (4, 3),
        (2, 3),
        torch.tensor(0.0, dtype=torch.float64),
    )
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)


def test_occlusion_tensor_and_noise_baselines() -> None:
    model = TinyConvNet().eval().double()
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    fill = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    fast = OccluderDiscrepancyMapping(model, model.conv2).attribute(
        x, target=(1, 2, 2), sliding_window_shapes=4, strides=4, baselines=fill
    )
    slow = _oracle(model, model.conv2, x, lambda out, n: out[0, 1, 2, 2], (4, 4), (4, 4), fill)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)
    odm = OccluderDiscrepancyMapping(model, model.conv2)
    noisy = odm.attribute(x, target=1, sliding_window_shapes=4, strides=4, baselines="noise")
    again = odm.attribute(x, target=1, sliding_window_shapes=4, strides=4, baselines="noise")
    other = odm.attribute(
        x, target=1, sliding_window_shapes=4, strides=4, baselines="noise", seed=1
    )
    torch.testing.assert_close(noisy, again, rtol=0, atol=0)
    assert not torch.equal(noisy, other)


def test_occlusion_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    OccluderDiscrepancyMapping(SumConv(), "conv").attribute(
        IMAGE,
        target=0,
        sliding_window_shapes=2,
        strides=1,
        perturbations_per_eval=1,
        show_progress=True,
    )
    assert "Occluder discrepancy mapping" in capsys.readouterr().err
