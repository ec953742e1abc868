"""The incremental occlusion path proves it applies (issue 11): refused, or equal to eager.

Each model below is one way in which the ``torch.fx`` graph could differ from eager execution
(an in-place write into a value that a skip connection also reads) or in which the fast path
failed late (an adaptive pooling that keeps the map size, any error in the occluded pass).
``method="auto"`` must then give the full recompute's answer (and the one-window oracle's),
and ``method="incremental"`` a ``ValueError`` naming the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnnbrain_captum import OccluderDiscrepancyMapping
from dnnbrain_captum.attr._incremental import IncrementalOcclusion, IncrementalUnsupported
from dnnbrain_captum.attr.occlusion import occlusion_grid_shape
from tests.test_occlusion_incremental import oracle

LOGGER = "dnnbrain_captum.attr.occlusion"
F64 = torch.float64
OPTIONS = dict(target=1, sliding_window_shapes=(4, 3), strides=(2, 3), baselines=-5.0)


class SkipAroundWrite(nn.Module):
    """``h = conv(x); skip = h; h = <write into h>; out = head(conv2(h) + skip)``.

    The first convolution is positive on the clean image (positive weights and bias, images
    in [0, 1]), so a rectifier changes nothing there and the clean-value check cannot see the
    difference; the occluder (-5) makes it negative inside the window.
    """

    def __init__(self, write: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.write = write
        self.relu = nn.ReLU(inplace=True)
        self.ident = nn.Identity()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.conv.weight.abs_()
            self.conv.bias.fill_(0.5)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        skip = h
        h = self.write(self, h)
        return self.head(self.conv2(h) + skip)


WRITES: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "nn.ReLU(inplace=True)": lambda m, h: m.relu(h),
    "F.relu(inplace=True)": lambda m, h: F.relu(h, inplace=True),
    "F.relu(h, True)": lambda m, h: F.relu(h, True),
    "h.relu_()": lambda m, h: h.relu_(),
    "torch.relu_": lambda m, h: torch.relu_(h),
    "h += 1": lambda m, h: h.__iadd__(1.0),
    "view then write": lambda m, h: h.view(h.shape).clamp_(min=0),
    "Identity then write": lambda m, h: m.relu(m.ident(h)),
    "detach then write": lambda m, h: m.relu(h.detach()),
    "setitem": lambda m, h: h.__setitem__((slice(None), 0), 0.0) or h,
}


def _images(n: int = 2, size: tuple[int, int] = (12, 12)) -> Tensor:
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(0), dtype=F64)


def _auto_full_oracle(model: nn.Module, layer: str, x: Tensor, **options: Any) -> Tensor:
    """``auto`` == ``full`` (exactly) == the one-window oracle (1e-10); returns ``auto``."""
    odm = OccluderDiscrepancyMapping(model, layer)
    auto = odm.attribute(x, **options)
    full = odm.attribute(x, method="full", **options)
    torch.testing.assert_close(auto, full, rtol=0, atol=1e-12)
    size = (x.shape[-2], x.shape[-1])
    window, stride = options["sliding_window_shapes"], options["strides"]
    grid = occlusion_grid_shape(size, window, stride)
    positions = [(r, c) for r in range(grid[0]) for c in range(grid[1])]
    targets = [options["target"]] * x.shape[0]
    expected = oracle(
        model, layer, x, targets, window, stride, positions, baselines=options["baselines"]
    )
    for (k, r, c), value in expected.items():
        assert abs(float(auto[k, r, c]) - value) <= 1e-10, (k, r, c)
    assert auto.abs().max() > 0
    return auto


def _accepted(log: str) -> bool:
    """Whether the engine accepted the model (auto may still prefer the full path on cost)."""
    return "incremental inference" in log or "the cost model prefers the full recompute" in log


@pytest.mark.parametrize("write", list(WRITES))
def test_in_place_write_into_a_value_read_elsewhere_is_refused(
    write: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = SkipAroundWrite(WRITES[write]).double()
    x = _images()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        _auto_full_oracle(model, "head", x, **OPTIONS)
    assert "full recompute" in caplog.text
    with pytest.raises(ValueError, match="method='incremental' is not possible here"):
        OccluderDiscrepancyMapping(model, "head").attribute(x, method="incremental", **OPTIONS)


def test_in_place_relu_on_the_issue_model_differed_from_eager() -> None:
    """The issue's reproducer: the traced graph's answer is far from the eager one."""
    model = SkipAroundWrite(WRITES["nn.ReLU(inplace=True)"]).double()
    x = _images()
    full = OccluderDiscrepancyMapping(model, "head").attribute(x, method="full", **OPTIONS)
    with pytest.raises(IncrementalUnsupported, match="in place into conv.*also read by"):
        IncrementalOcclusion(model, model.head)
    assert full.abs().max() > 1e-2


class WriteWithoutOtherReaders(nn.Module):
    """``h = relu_(conv(x)); out = head(conv2(h) + h)``: the write is invisible (exact)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)
        self.relu = nn.ReLU(inplace=True)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.conv(x))
        h = torch.relu_(h)
        h += 0.25
        return self.head(self.conv2(h) + h)


def test_in_place_writes_without_other_readers_stay_incremental(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = WriteWithoutOtherReaders().double()
    x = _images()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        auto = _auto_full_oracle(model, "head", x, **OPTIONS)
    assert _accepted(caplog.text), caplog.text
    forced = OccluderDiscrepancyMapping(model, "head").attribute(x, method="incremental", **OPTIONS)
    torch.testing.assert_close(forced, auto, rtol=0, atol=1e-12)  # auto may take the full path


class WriteIntoTheInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 2, 3)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.clamp_(max=0.5))


def test_in_place_write_into_the_model_input_is_refused() -> None:
    model = WriteIntoTheInput().double()
    with pytest.raises(IncrementalUnsupported, match="the model's input"):
        IncrementalOcclusion(model, model.conv)


class SizeKeepingAdaptivePool(nn.Module):
    """conv → AdaptiveAvgPool2d / AdaptiveMaxPool2d to the map's own size → conv."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = pool
        self.conv2 = nn.Conv2d(4, 3, 3)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.pool(self.conv(x)))


@pytest.mark.parametrize(
    "pool", [nn.AdaptiveAvgPool2d((12, 12)), nn.AdaptiveMaxPool2d((12, None))], ids=str
)
def test_size_keeping_adaptive_pool_is_exact(
    pool: nn.Module, caplog: pytest.LogCaptureFixture
) -> None:
    model = SizeKeepingAdaptivePool(pool).double()
    x = _images()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        _auto_full_oracle(model, "conv2", x, **OPTIONS)
    assert _accepted(caplog.text), caplog.text


@pytest.mark.parametrize(
    "error", [IncrementalUnsupported("late refusal"), RuntimeError("late failure")], ids=repr
)
def test_any_failure_of_the_occluded_pass_falls_back(
    error: Exception, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = WriteWithoutOtherReaders().double()
    x = _images()
    reference = OccluderDiscrepancyMapping(model, "head").attribute(x, method="full", **OPTIONS)
    real = IncrementalOcclusion.occluded
    calls = []

    def fail_second_batch(self: IncrementalOcclusion, *args: Any) -> Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise error
        return real(self, *args)

    monkeypatch.setattr(IncrementalOcclusion, "occluded", fail_second_batch)
    # a tiny model: make auto take the incremental path whatever the cost model says
    monkeypatch.setattr("dnnbrain_captum.attr.occlusion.incremental_pays", lambda *a: True)
    options = dict(OPTIONS, perturbations_per_eval=5)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        auto = OccluderDiscrepancyMapping(model, "head").attribute(x, **options)
    assert len(calls) == 2
    assert f"full recompute: {error}" in caplog.text or str(error) in caplog.text
    torch.testing.assert_close(auto, reference, rtol=0, atol=0)
    calls.clear()
    with pytest.raises(ValueError, match=f"not possible here: .*{error}"):
        OccluderDiscrepancyMapping(model, "head").attribute(x, method="incremental", **options)
