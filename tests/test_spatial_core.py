"""One geometry core (issue 16): receptive fields and incremental occlusion read the same rules.

``dnnbrain_captum/_spatial.py`` owns the per-operation geometry. A sliding-window operation
the package has never heard of is refused by both clients; registered once in the core, it is
followed by both: the receptive-field table gives its textbook field and incremental
occlusion (layer and class targets) equals the one-window-one-forward oracle in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import handle_torch_function, has_torch_function_unary

from dnnbrain_captum import OccluderDiscrepancyMapping
from dnnbrain_captum._spatial import (
    Footprint,
    WindowOp,
    register_window_op,
    unregister_window_op,
    window_of_call,
    window_of_module,
)
from dnnbrain_captum.receptive_field import TheoreticalReceptiveField
from dnnbrain_captum.receptive_field.theoretical import UnsupportedOperationError
from tests.helpers.random_cnn import brute_force_occlusion

F64 = torch.float64


def min_pool2d(x: Tensor, kernel_size: int, stride: int | None = None, padding: int = 0) -> Tensor:
    """A sliding window unknown to the package: the minimum over each window."""
    if has_torch_function_unary(x):  # seen by torch-function modes and by torch.fx
        return handle_torch_function(min_pool2d, (x,), x, kernel_size, stride, padding)  # type: ignore[no-any-return]
    return -F.max_pool2d(-x, kernel_size, stride, padding)


MIN_POOL = WindowOp(
    "min_pool2d",
    min_pool2d,
    ("kernel_size", "stride", "padding"),
    {"stride": None, "padding": 0},
    lambda bound: bound["kernel_size"],
    fill=math.inf,  # a padded position never wins the minimum
    ceil_by_fill=True,
)


class MinPoolNet(nn.Module):
    """conv 3x3 (pad 1) → min pool 3x3 stride 2 pad 1 → conv 3x3 → mean → linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(min_pool2d(torch.relu(self.conv1(x)), 3, 2, 1))
        return self.fc(y.mean((2, 3)))


@pytest.fixture
def registered() -> Iterator[None]:
    register_window_op(MIN_POOL)
    try:
        yield
    finally:
        unregister_window_op("min_pool2d")


def _images() -> Tensor:
    return torch.rand(1, 3, 14, 13, generator=torch.Generator().manual_seed(12), dtype=F64)


def test_an_unregistered_window_is_refused_by_both_clients() -> None:
    model = MinPoolNet().double().eval()
    with pytest.raises(UnsupportedOperationError, match="min_pool2d"):
        TheoreticalReceptiveField(model, (3, 14, 13)).compute()
    odm = OccluderDiscrepancyMapping(model, layer=model.conv2)
    with pytest.raises(ValueError, match="not possible here: .*min_pool2d"):
        odm.attribute(_images(), target=1, sliding_window_shapes=3, method="incremental")


def test_a_window_registered_once_in_the_core_reaches_both_clients(registered: None) -> None:
    model = MinPoolNet().double().eval()
    # receptive field: conv 3 → 3 px; min pool 3/2 → 3 + 2 = 5 px, jump 2; conv 3 → 5 + 2·2
    entry = TheoreticalReceptiveField(model, (3, 14, 13)).compute()["conv2"]
    assert (entry.size, entry.stride, entry.output_size) == ((9, 9), (2, 2), (5, 5))
    x = _images()
    fill = torch.zeros(1, 3, 14, 13, dtype=F64)
    for layer, target in ((model.conv2, 1), (None, 2)):
        expected = brute_force_occlusion(model, layer, x, target, (3, 4), (2, 3), fill)
        assert expected.abs().max() > 0
        got = OccluderDiscrepancyMapping(model, layer=layer).attribute(
            x, target=target, sliding_window_shapes=(3, 4), strides=(2, 3), method="incremental"
        )
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_reach_meets_the_window_spans(seed: int) -> None:
    """``reach`` gives the outputs whose window span (first to last tap) meets [lo, hi).

    A superset of the outputs with a tap in [lo, hi) (dilation leaves gaps between taps),
    never missing one of them.
    """
    g = torch.Generator().manual_seed(seed)
    for _ in range(25):
        k, s, d = (int(v) for v in torch.randint(1, 5, (3,), generator=g))
        p = int(torch.randint(0, k * d, (1,), generator=g))
        fp = Footprint(k, s, p, d)
        n_out = 12
        taps = fp.taps(n_out)
        lo = torch.randint(-3, 20, (30,), generator=g)
        hi = lo + torch.randint(0, 6, (30,), generator=g)
        first, last = fp.reach(lo, hi)
        for i in range(30):
            span = (taps[:, 0] < hi[i]) & (taps[:, -1] >= lo[i]) & (hi[i] > lo[i])
            tap = ((taps >= lo[i]) & (taps < hi[i])).any(1)
            reached = [bool(first[i] <= o < last[i]) for o in range(n_out)]
            assert reached == span.tolist(), (fp, int(lo[i]), int(hi[i]))
            assert not (tap & ~span).any()


def test_calls_and_modules_read_one_footprint() -> None:
    x = torch.empty(1, 2, 9, 9)
    weight = torch.empty(3, 2, 3, 5)
    same = window_of_call("conv2d", (x, weight), {"padding": "same", "dilation": (2, 1)})
    assert same.axes == (Footprint(3, 1, 2, 2), Footprint(5, 1, 2, 1))
    pool = window_of_call("max_pool2d", (x, 3), {"padding": 1, "ceil_mode": True})
    assert pool.axes == (Footprint(3, 3, 1, 1),) * 2 and pool.ceil_mode and pool.fill == -math.inf
    module = window_of_module(nn.AvgPool2d((2, 4), stride=(1, 2), padding=(1, 0)))
    assert module is not None and module.axes == (Footprint(2, 1, 1, 1), Footprint(4, 2, 0, 1))
    lp = window_of_module(nn.LPPool2d(2, 3))
    assert lp is not None and lp.axes == (Footprint(3, 3, 0, 1),) * 2


class CoreOps(nn.Module):
    """Operations the engine follows only through the core: functional pools, LP pooling,
    ``maximum`` / ``where`` of two paths, an in-place clamp, a number minus a map."""

    def __init__(self, ceil: bool = False) -> None:
        super().__init__()
        torch.manual_seed(13)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.lp = nn.LPPool2d(2, 2, ceil_mode=ceil)
        self.conv3 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        a = F.max_pool2d(self.conv1(x), 3, 1, 1)
        b = F.avg_pool2d(self.conv2(a), 3, stride=1, padding=1, count_include_pad=False)
        y = torch.where(a > b, a, 2.0 - b) + torch.maximum(a, b)
        y = self.conv3(self.lp(y.clamp_(min=0.0) + 0.1))
        return self.fc(y.mean((2, 3)))


def test_the_engine_follows_the_cores_operations() -> None:
    model = CoreOps().double().eval()
    x = _images()
    fill = torch.full((1, 3, 14, 13), 0.5, dtype=F64)
    for layer, target in ((model.conv3, 2), (None, 0)):
        expected = brute_force_occlusion(model, layer, x, target, (4, 3), (3, 2), fill)
        got = OccluderDiscrepancyMapping(model, layer=layer).attribute(
            x,
            target=target,
            sliding_window_shapes=(4, 3),
            strides=(3, 2),
            baselines=0.5,
            method="incremental",
        )
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_partial_lp_pool_windows_are_refused() -> None:
    model = CoreOps(ceil=True).double().eval()  # 14 x 13 maps: ceil mode adds a partial column
    odm = OccluderDiscrepancyMapping(model, layer=model.conv3)
    with pytest.raises(ValueError, match="ceil_mode adds partial windows"):
        odm.attribute(_images(), target=1, sliding_window_shapes=3, method="incremental")
