"""Class occlusion (``layer=None``) by incremental inference (issue 16) equals brute force.

Torchvision ResNet-18, VGG11-BN, MobileNet-v2 and DenseNet-121 with random weights (and random
batch-norm statistics), small float64 images, every window of a coarse grid: the default
``method="auto"`` and the forced ``method="incremental"`` equal the one-window-one-forward
oracle to 1e-10 of the output's scale; models the cut cannot serve fall back to the full
recompute (same numbers) and ``"incremental"`` names the reason.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import densenet121, mobilenet_v2, resnet18, vgg11_bn

from dnnbrain_captum import OccluderDiscrepancyMapping
from dnnbrain_captum.attr._incremental import OutputOcclusion
from tests.helpers.random_cnn import brute_force_occlusion

LOGGER = "dnnbrain_captum.attr.occlusion"
F64 = torch.float64


def _randomized(model: nn.Module, seed: int) -> nn.Module:
    """Float64, eval mode, batch-norm statistics and affine terms drawn at random."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
    return model.double().eval()


def _slim_vgg11_bn(num_classes: int) -> nn.Module:
    """Torchvision's VGG11-BN with a narrow classifier (16 hidden units instead of 4096).

    The features (every spatial operation) and the head's layout are torchvision's; only the
    width of the fully connected layers differs, which makes the default test ~10x cheaper
    (the full-width model is checked by the slow test below). Built on the meta device so that
    the 120M-parameter classifier is never allocated.
    """
    with torch.device("meta"):
        model = vgg11_bn(num_classes=num_classes)
    model.features = model.features.to_empty(device="cpu")
    for m in model.features.modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            m.reset_parameters()
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 16), nn.ReLU(True), nn.Dropout(), nn.Linear(16, num_classes)
    )
    return model


def _check(
    model: nn.Module,
    x: Tensor,
    target: Any,
    window: tuple[int, int],
    stride: tuple[int, int],
    baselines: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fill = (
        baselines.expand(-1, *x.shape[1:])
        if isinstance(baselines, Tensor)
        else torch.full((1, *x.shape[1:]), float(baselines), dtype=x.dtype)
    )
    targets = target if isinstance(target, list) else [target] * x.shape[0]
    expected = torch.stack(
        [
            brute_force_occlusion(model, None, x[k : k + 1], t, window, stride, fill[:1])[0]
            if fill.shape[0] == 1
            else brute_force_occlusion(
                model, None, x[k : k + 1], t, window, stride, fill[k : k + 1]
            )[0]
            for k, t in enumerate(targets)
        ]
    )
    assert expected.abs().max() > 0
    with torch.no_grad():  # float64 rounding scales with the outputs themselves
        scale = model(x).abs().max().item()
    odm = OccluderDiscrepancyMapping(model)
    options = dict(
        target=target,
        sliding_window_shapes=window,
        strides=stride,
        baselines=baselines,
        perturbations_per_eval=4,
    )
    forced = odm.attribute(x, method="incremental", **options)
    torch.testing.assert_close(forced, expected, rtol=0, atol=1e-10 * scale)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        auto = odm.attribute(x, **options)  # incremental, or full where the cost model says so
    assert "occlusion map by" in caplog.text
    torch.testing.assert_close(auto, expected, rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize(
    ("make", "size", "window", "stride", "cut", "pooled"),
    [
        (resnet18, (40, 36), (12, 10), (14, 13), "layer4_1_relu_1", True),
        (_slim_vgg11_bn, (32, 32), (8, 11), (12, 10), "features_28", False),
        (mobilenet_v2, (32, 32), (12, 9), (20, 11), "features_18_2", True),
        (densenet121, (32, 36), (10, 12), (22, 12), "relu", True),
    ],
    ids=["resnet18", "vgg11_bn", "mobilenet_v2", "densenet121"],
)
def test_torchvision_class_occlusion_equals_brute_force(
    make: Any,
    size: tuple[int, int],
    window: tuple[int, int],
    stride: tuple[int, int],
    cut: str,
    pooled: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch.manual_seed(0)
    model = _randomized(make(num_classes=7), seed=1)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(2), dtype=F64)
    engine = OutputOcclusion(model, x[:1])
    assert (engine.cut_name, engine.pooled) == (cut, pooled)
    baselines = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(3), dtype=F64)
    _check(model, x, [2, 5], window, stride, baselines, caplog)


@pytest.mark.slow
def test_full_width_vgg11_bn_class_occlusion_equals_brute_force(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """torchvision's VGG11-BN as it is (4096-wide classifier): ~15 s on a loaded 2-core box."""
    torch.manual_seed(0)
    model = _randomized(vgg11_bn(num_classes=7), seed=1)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=F64)
    engine = OutputOcclusion(model, x[:1])
    assert (engine.cut_name, engine.pooled) == ("features_28", False)
    baselines = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=F64)
    _check(model, x, [2, 5], (8, 11), (12, 10), baselines, caplog)


class Gated(nn.Module):
    """conv → squeeze-excitation gate (a global op) → conv → GAP → linear.

    The last spatial value every path passes through is the first convolution's output, so
    the head starts there (the gate and everything after it run on the pasted map).
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = nn.AdaptiveAvgPool2d(1)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2)
        self.fc = nn.Linear(5, 3)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(x)
        y = self.conv2(y * torch.sigmoid(self.gate(y)))
        return self.fc(y.mean((2, 3)))


def test_cut_before_a_global_gate_pastes_the_map(caplog: pytest.LogCaptureFixture) -> None:
    model = Gated().double()
    x = torch.rand(1, 3, 13, 12, generator=torch.Generator().manual_seed(5), dtype=F64)
    engine = OutputOcclusion(model, x)
    assert (engine.cut_name, engine.pooled) == ("conv1", False)
    _check(model, x, 1, (4, 5), (3, 2), -1.0, caplog)


class ImageShortcut(nn.Module):
    """The output also reads the image's mean directly: no spatial value dominates it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x).mean((2, 3))) + x.mean((1, 2, 3))[:, None]


class TupleOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv = nn.Conv2d(3, 2, 3)
        self.eval()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.conv(x).mean((2, 3))
        return y, y


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (ImageShortcut(), "no spatial operation lies on every path"),
        (nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 8 * 8, 3)), "flatten"),
    ],
    ids=["image-shortcut", "flatten-without-dominating-cut"],
)
def test_class_occlusion_falls_back_where_the_cut_cannot_serve(
    model: nn.Module, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = model.double().eval()
    x = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(8), dtype=F64)
    options = dict(target=1, sliding_window_shapes=4, strides=3)
    fill = torch.zeros(1, 3, 10, 10, dtype=F64)
    expected = brute_force_occlusion(model, None, x, 1, (4, 4), (3, 3), fill)
    odm = OccluderDiscrepancyMapping(model)
    try:
        engine = OutputOcclusion(model, x)
    except Exception:  # noqa: BLE001 - refused: auto must fall back
        engine = None
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        auto = odm.attribute(x, **options)
    torch.testing.assert_close(auto, expected, rtol=0, atol=1e-12)
    if engine is None:
        assert "full recompute" in caplog.text and reason in caplog.text, caplog.text
        with pytest.raises(ValueError, match=f"not possible here: .*{reason}"):
            odm.attribute(x, method="incremental", **options)


def test_tuple_output_gives_the_full_paths_error() -> None:
    x = torch.rand(1, 3, 8, 8, dtype=F64)
    odm = OccluderDiscrepancyMapping(TupleOutput().double())
    with pytest.raises((TypeError, ValueError, AttributeError)) as full_error:
        odm.attribute(x, target=0, sliding_window_shapes=4, strides=4, method="full")
    with pytest.raises(type(full_error.value)):
        odm.attribute(x, target=0, sliding_window_shapes=4, strides=4)
