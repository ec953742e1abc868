"""Incremental occlusion (issue 7): equal to the full recompute and to a one-window oracle.

The full-recompute path (``method="full"``) and a slow oracle written here (one occluded image
per whole-model forward, the layer's output taken with a forward hook) are compared with the
incremental path in float64 to 1e-10, on torchvision AlexNet, VGG11, ResNet-18, the bundled
digits model and random small nets with stride/padding/dilation/pooling variety, border
windows included (every grid below ends exactly at the image's bottom/right edge).
"""

from __future__ import annotations

import copy
import logging
import random
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import alexnet, resnet18, vgg11

from dnnbrain_captum import OccluderDiscrepancyMapping
from dnnbrain_captum.attr._incremental import IncrementalOcclusion
from dnnbrain_captum.attr.occlusion import occlusion_grid_shape
from dnnbrain_captum.models import digits_cnn, digits_images
from tests.helpers.incremental_models import FlipBeforeTarget, GlobalGate, RandomGeometryNet

LOGGER = "dnnbrain_captum.attr.occlusion"
F64 = torch.float64


def _value(output: Tensor, target: Any, reduction: str) -> float:
    """The target's value on a (C, H, W) layer output, written out literally."""
    if isinstance(target, tuple):
        return float(output[target])
    channel = output[target]
    if reduction == "mean":
        return float(channel.mean())
    if reduction == "max":
        return float(channel.max())
    return float(channel.sum())


def _fill(x: Tensor, baselines: Any) -> Tensor:
    """The occluder's content (N or 1, C, H, W), written out from the documented semantics."""
    if isinstance(baselines, str):  # "noise": uniform between each image's min and max
        field = torch.rand(x.shape[1:], generator=torch.Generator().manual_seed(0), dtype=x.dtype)
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        return low + field * (high - low)
    if isinstance(baselines, Tensor):
        return baselines.to(x.dtype).expand(-1, *x.shape[1:])
    return torch.full((1, *x.shape[1:]), float(baselines), dtype=x.dtype)


def oracle(
    model: nn.Module,
    layer: str,
    x: Tensor,
    targets: list[Any],
    window: tuple[int, int],
    stride: tuple[int, int],
    positions: list[tuple[int, int]],
    reduction: str = "mean",
    baselines: Any = 0.0,
) -> dict[tuple[int, int, int], float]:
    """Original − occluded, one window and one image per forward pass (stopped at the layer)."""
    fill = _fill(x, baselines)
    module = model.get_submodule(layer)
    captured: list[Tensor] = []

    class Stop(Exception):
        pass

    def keep(m: nn.Module, args: Any, out: Tensor) -> None:
        captured.append(out.detach().clone())
        raise Stop  # nothing after the layer matters

    def run(image: Tensor) -> Tensor:
        captured.clear()
        try:
            model(image)
        except Stop:
            pass
        return captured[0][0]

    handle = module.register_forward_hook(keep)
    values = {}
    try:
        with torch.no_grad():
            for k in range(x.shape[0]):
                original = _value(run(x[k : k + 1]), targets[k], reduction)
                content = fill[k if fill.shape[0] > 1 else 0].expand(x.shape[1:])
                for r, c in positions:
                    top, left = r * stride[0], c * stride[1]
                    image = x[k].clone()
                    image[:, top : top + window[0], left : left + window[1]] = content[
                        :, top : top + window[0], left : left + window[1]
                    ]
                    values[(k, r, c)] = original - _value(run(image[None]), targets[k], reduction)
    finally:
        handle.remove()
    return values


def _positions(grid: tuple[int, int], extra: int = 4) -> list[tuple[int, int]]:
    """Corners, border midpoints and a few interior windows (all of them on small grids)."""
    if grid[0] * grid[1] <= extra + 8:
        return [(r, c) for r in range(grid[0]) for c in range(grid[1])]
    rows, cols = grid[0] - 1, grid[1] - 1
    chosen = {(0, 0), (0, cols), (rows, 0), (rows, cols)}
    chosen |= {(0, cols // 2), (rows, cols // 2), (rows // 2, 0), (rows // 2, cols)}
    rng = random.Random(grid[0] * 100 + grid[1])
    while len(chosen) < extra + 8:
        chosen.add((rng.randint(0, rows), rng.randint(0, cols)))
    return sorted(chosen)


def check(
    model: nn.Module,
    layer: str,
    x: Tensor,
    target: Any,
    window: tuple[int, int],
    stride: tuple[int, int],
    reduction: str = "mean",
    baselines: Any = 0.0,
    atol: float = 1e-10,
    with_oracle: bool = True,
) -> Tensor:
    """Incremental == full (all windows) == oracle (border and sampled windows)."""
    size = (x.shape[-2], x.shape[-1])
    assert all((s - w) % t == 0 for s, w, t in zip(size, window, stride, strict=True)), (
        "the grid must end at the border"
    )
    odm = OccluderDiscrepancyMapping(model, layer)
    options = dict(
        target=target,
        sliding_window_shapes=window,
        strides=stride,
        reduction=reduction,
        baselines=baselines,
        perturbations_per_eval=23,
    )
    incremental = odm.attribute(x, method="incremental", **options)
    full = odm.attribute(x, method="full", **options)
    torch.testing.assert_close(incremental, full, rtol=0, atol=atol)
    if with_oracle:
        grid = occlusion_grid_shape(size, window, stride)
        targets = list(target) if isinstance(target, (list, Tensor)) else [target] * x.shape[0]
        positions = _positions(grid)
        expected = oracle(model, layer, x, targets, window, stride, positions, reduction, baselines)
        for (k, r, c), value in expected.items():
            assert abs(float(incremental[k, r, c]) - value) <= atol, (k, r, c)
    assert incremental.abs().max() > 0  # the windows do change the target
    return incremental


def _image(n: int, size: tuple[int, int], seed: int = 0) -> Tensor:
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.fixture(scope="module")
def alexnet64() -> nn.Module:
    torch.manual_seed(1)
    return alexnet().double().eval()


def test_alexnet_conv3_conv5_pool(alexnet64: nn.Module) -> None:
    x = _image(1, (127, 127))
    check(alexnet64, "features.6", x, 17, (15, 15), (16, 16))
    check(alexnet64, "features.10", x, 3, (11, 11), (29, 29), reduction="max", baselines="noise")
    check(alexnet64, "features.12", x, (5, 1, 2), (7, 9), (40, 59), with_oracle=False)


def test_vgg11_conv_targets() -> None:
    torch.manual_seed(2)
    model = vgg11().double().eval()
    x = _image(1, (32, 32), seed=1)
    check(model, "features.8", x, 4, (6, 6), (13, 13), reduction="sum")
    check(model, "features.12", x, 7, (5, 5), (9, 9), with_oracle=False)


def test_resnet18_residual_targets() -> None:
    torch.manual_seed(3)
    model = resnet18().double().eval()
    with torch.no_grad():  # non-trivial running statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    x = _image(2, (48, 48), seed=2)
    check(model, "layer1", x, [3, 60], (7, 7), (41, 41), reduction="max", baselines="noise")
    check(model, "layer2", x, 5, (9, 9), (13, 13))
    check(model, "layer2.0.downsample", x, (9, 1, 2), (9, 9), (39, 39), with_oracle=False)


def test_digits_model_float32_and_float64() -> None:
    images, _ = digits_images(n=2)
    model = digits_cnn()
    # Trained weights in float32: as close to the exact (float64) map as the float32 full
    # recompute is (both carry float32 rounding; their difference is up to twice it).
    exact_model = copy.deepcopy(model).double()
    for layer in ("conv3", "conv5"):
        odm = OccluderDiscrepancyMapping(model, layer)
        options = dict(target=[5, 9], sliding_window_shapes=(8, 8), strides=(4, 4))
        incremental = odm.attribute(images, method="incremental", **options)
        full = odm.attribute(images, method="full", **options)
        exact = OccluderDiscrepancyMapping(exact_model, layer).attribute(
            images.double(), method="full", **options
        )
        scale = max(exact.abs().max().item(), 1.0)
        for result in (incremental, full):
            torch.testing.assert_close(result.double(), exact, rtol=0, atol=1e-6 * scale)
    check(model.double(), "features.10", images.double(), 9, (6, 6), (13, 13))


@pytest.mark.parametrize("seed", range(8))
def test_random_geometry_nets(seed: int) -> None:
    model = RandomGeometryNet(seed).double()
    x = _image(2, (37, 30), seed=seed)
    rng = random.Random(seed)
    # (window, stride) per axis; every grid ends at the border, strides vary the alignment.
    (wh, sh), (ww, sw) = (
        rng.choice([(7, 5), (4, 3), (5, 4), (9, 7)]),
        rng.choice([(2, 4), (5, 5), (3, 3), (6, 8)]),
    )
    window, stride = (wh, ww), (sh, sw)
    baselines = torch.rand(2, 3, 37, 30, generator=torch.Generator().manual_seed(seed)).double()
    check(model, "head", x, [seed % 5, 4 - seed % 5], window, stride, baselines=baselines)
    check(model, "depthwise", x, 11, window, stride, reduction="max", with_oracle=False)


def test_auto_uses_the_incremental_path(
    alexnet64: nn.Module, caplog: pytest.LogCaptureFixture
) -> None:
    x = _image(1, (67, 67))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        auto = OccluderDiscrepancyMapping(alexnet64, "features.3").attribute(
            x, target=1, sliding_window_shapes=11, strides=8
        )
    assert "incremental inference" in caplog.text
    full = OccluderDiscrepancyMapping(alexnet64, "features.3").attribute(
        x, target=1, sliding_window_shapes=11, strides=8, method="full"
    )
    torch.testing.assert_close(auto, full, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (FlipBeforeTarget, "flip"),
        (GlobalGate, "global op"),
    ],
)
def test_fallback_gives_the_full_answer_and_logs_why(
    make: Any, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = make().double()
    x = _image(2, (12, 12), seed=4)
    options = dict(target=1, sliding_window_shapes=(4, 3), strides=(2, 3))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        auto = OccluderDiscrepancyMapping(model, "conv2").attribute(x, **options)
    assert any(
        r.levelno == logging.DEBUG
        and "full recompute" in r.getMessage()
        and reason in r.getMessage()
        for r in caplog.records
    ), caplog.text
    full = OccluderDiscrepancyMapping(model, "conv2").attribute(x, method="full", **options)
    torch.testing.assert_close(auto, full, rtol=0, atol=0)
    grid = occlusion_grid_shape((12, 12), (4, 3), (2, 3))
    positions = [(r, c) for r in range(grid[0]) for c in range(grid[1])]
    expected = oracle(model, "conv2", x, [1, 1], (4, 3), (2, 3), positions)
    for (k, r, c), value in expected.items():
        assert abs(float(auto[k, r, c]) - value) <= 1e-10
    with pytest.raises(ValueError, match=f"method='incremental' is not possible here: .*{reason}"):
        OccluderDiscrepancyMapping(model, "conv2").attribute(x, method="incremental", **options)


def test_fallback_on_hooks_training_mode_and_callable_target(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = RandomGeometryNet(3).double()
    x = _image(1, (37, 30))
    options = dict(sliding_window_shapes=(7, 5), strides=(3, 5))
    reference = OccluderDiscrepancyMapping(model, "head").attribute(
        x, target=2, method="full", **options
    )
    handle = model.stem.register_forward_hook(lambda m, a, o: None)
    try:
        with caplog.at_level(logging.DEBUG, logger=LOGGER):
            hooked = OccluderDiscrepancyMapping(model, "head").attribute(x, target=2, **options)
    finally:
        handle.remove()
    assert "stem has forward hooks" in caplog.text
    torch.testing.assert_close(hooked, reference, rtol=0, atol=0)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        called = OccluderDiscrepancyMapping(model, "head").attribute(
            x, target=lambda out: out[:, 2].mean((1, 2)), **options
        )
    assert "callable" in caplog.text
    torch.testing.assert_close(called, reference, rtol=0, atol=1e-12)
    caplog.clear()
    model.bn.train()  # batch statistics: only the full recompute is right
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        OccluderDiscrepancyMapping(model, "head").attribute(x, target=2, **options)
    assert "training mode" in caplog.text


def test_method_is_validated(alexnet64: nn.Module) -> None:
    x = _image(1, (32, 32))
    with pytest.raises(ValueError, match="method must be one of .*got 'fast'"):
        OccluderDiscrepancyMapping(alexnet64, "features.0").attribute(x, target=0, method="fast")


def test_fewer_multiply_adds_than_full_at_alexnet_conv3() -> None:
    torch.manual_seed(0)
    model = alexnet().eval()
    engine = IncrementalOcclusion(model, model.features[6])
    with torch.no_grad():
        engine.clean_targets(torch.rand(1, 3, 224, 224), 0, "mean")
    plan = engine.plan([0], (11, 11), (2, 2), (107, 107))
    incremental, full = engine.macs_per_window(plan)
    assert full > 10 * incremental
    # conv1 / conv2 / conv3 output patches for an 11-pixel window at stride 2.
    lengths = [plan.axes[k][0].length for k in plan.order]
    assert lengths == [6, 6, 4, 8, 8, 5, 7]


def test_padded_clean_maps_are_contiguous_rows_of_channels() -> None:
    """Every clean map the patches gather from is (H·W, C) rows stored one after another.

    A strided (channels-first) view gives the same values but makes each row gather C
    scattered elements: on AlexNet's 3-channel image 15x slower, 12 % of a conv5 map.
    """
    torch.manual_seed(0)
    model = alexnet().eval()
    engine = IncrementalOcclusion(model, model.features[10])
    with torch.no_grad():
        engine.clean_targets(torch.rand(1, 3, 224, 224), 0, "mean")
    plan = engine.plan([0], (11, 11), (2, 2), (107, 107))
    padded = engine._padded_clean(plan)
    assert padded  # conv1's image, conv2 and conv5's deltas at least
    for key, rows in padded.items():
        assert rows.dim() == 2 and rows.is_contiguous(), (key, rows.stride())


@pytest.mark.slow
def test_alexnet_224_default_grid_float32() -> None:
    torch.manual_seed(0)
    model = alexnet().eval()
    x = torch.rand(1, 3, 224, 224)
    for layer in ("features.6", "features.10"):
        odm = OccluderDiscrepancyMapping(model, layer)
        options = dict(target=7, sliding_window_shapes=11, strides=4, perturbations_per_eval=64)
        incremental = odm.attribute(x, method="incremental", **options)
        full = odm.attribute(x, method="full", **options)
        with torch.no_grad():  # float32 rounding scales with the target's value itself
            value = model.features[: int(layer.split(".")[1]) + 1](x)[0, 7].mean().abs().item()
        torch.testing.assert_close(incremental, full, rtol=0, atol=1e-5 * value)


@pytest.mark.slow
def test_resnet18_112_layer2_float64_oracle() -> None:
    torch.manual_seed(4)
    model = resnet18().double().eval()
    check(model, "layer2", _image(1, (112, 112)), 11, (11, 11), (101, 101))
    check(model, "layer3", _image(1, (112, 112)), 11, (16, 16), (12, 12))


@pytest.mark.parametrize(
    ("make", "size", "layer", "exact"),
    [
        (alexnet, (67, 67), "features.6", True),
        (resnet18, (64, 64), "layer2", True),
        (lambda: RandomGeometryNet(4), (37, 30), "head", False),
    ],
)
def test_affected_units_agree_with_the_receptive_field_table(
    make: Any, size: tuple[int, int], layer: str, exact: bool
) -> None:
    """A window affects the units whose theoretical receptive field overlaps it.

    The patch geometry here is computed independently of ``dnnbrain_captum.receptive_field``;
    it must contain exactly those units (a superset where dilation leaves gaps at borders).
    """
    from dnnbrain_captum.receptive_field import TheoreticalReceptiveField

    torch.manual_seed(0)
    model = make().eval()
    table = TheoreticalReceptiveField(model, (3, *size)).compute(until=layer)
    engine = IncrementalOcclusion(model, model.get_submodule(layer))
    with torch.no_grad():
        engine.clean_targets(torch.rand(1, 3, *size), 0, "mean")
    window, stride = (7, 6), (3, 4)
    grid = occlusion_grid_shape(size, window, stride)
    plan = engine.plan([0], window, stride, grid)
    checked = 0
    for k in plan.order:
        node = engine.graph.nodes[k]
        if node.footprint is None:
            continue
        name = node.name
        height, width = engine.clean_values[k].shape[-2:]
        rows = [table.find_region(name, (i, 0))[0] for i in range(height)]
        cols = [table.find_region(name, (0, j))[1] for j in range(width)]
        for a, (regions, axis) in enumerate(((rows, plan.axes[k][0]), (cols, plan.axes[k][1]))):
            for position in range(grid[a]):
                first = position * stride[a]
                hit = [
                    u for u, (lo, hi) in enumerate(regions) if lo < first + window[a] and hi > first
                ]
                lo, hi = int(axis.lo[position]), int(axis.hi[position])
                assert lo <= min(hit) and hi >= max(hit) + 1, (name, a, position)
                if exact:
                    assert (lo, hi) == (min(hit), max(hit) + 1), (name, a, position)
        checked += 1
    assert checked >= 3
