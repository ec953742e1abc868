"""The cost model of `method="auto"`: arithmetic and data movement on a CPU, the full
recompute on accelerators."""

import logging

import pytest
import torch

from dnnbrain_captum import OccluderDiscrepancyMapping
from dnnbrain_captum.attr._incremental import IncrementalOcclusion
from dnnbrain_captum.attr._incremental.cost import MOVE_COST, PATCH_PENALTY, incremental_pays
from dnnbrain_captum.models.digits import DigitsCNN


def test_cpu_follows_the_multiply_adds() -> None:
    cpu = torch.device("cpu")
    assert incremental_pays(100, int(PATCH_PENALTY * 100) + 1, cpu)
    assert not incremental_pays(100, int(PATCH_PENALTY * 100) - 1, cpu)


def test_cpu_counts_the_moved_elements() -> None:
    cpu = torch.device("cpu")
    full = int(PATCH_PENALTY * 100) + 10 * MOVE_COST
    assert incremental_pays(100, full + 1, cpu, moved=10)
    assert not incremental_pays(100, full - 1, cpu, moved=10)


def test_accelerators_take_the_full_recompute() -> None:
    # measured on an H200: the incremental patches are launch-bound (benchmarks/README.md)
    for device in (torch.device("meta"), torch.device("cuda", 0)):
        assert not incremental_pays(1, 10**12, device)


def test_digits_conv5_takes_the_full_recompute(caplog: pytest.LogCaptureFixture) -> None:
    """conv5 of the digits CNN: 1.76x fewer multiply-adds, but the patches cover most of its
    8x8 maps and the gathers cost more than that (measured 1.5x slower): auto goes full."""
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    engine = IncrementalOcclusion(model, model.features[10])
    engine.clean_targets(x, 3, "mean")
    plan = engine.sweep_plan((11, 11), (2, 2), (11, 11))
    incremental, full = engine.macs_per_window(plan)
    assert 1.7 < full / incremental < 1.8
    odm = OccluderDiscrepancyMapping(model, layer=model.features[10])
    with caplog.at_level(logging.DEBUG, logger="dnnbrain_captum.attr.occlusion"):
        auto = odm.attribute(x, target=3)
    assert "cost model prefers the full recompute" in caplog.text
    forced = odm.attribute(x, target=3, method="incremental")
    torch.testing.assert_close(auto, forced, rtol=1e-4, atol=1e-5)
