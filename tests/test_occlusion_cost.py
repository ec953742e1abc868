"""The cost model of `method="auto"`: arithmetic and data movement on a CPU, the full
recompute on accelerators."""

import logging

import pytest
import torch

from dnnbrain_captum import OccluderDiscrepancyMapping
from dnnbrain_captum.attr._incremental import OutputOcclusion
from dnnbrain_captum.attr._incremental.cost import (
    ELEMENT_COST,
    MOVE_COST,
    OP_COST,
    PATCH_PENALTY,
    batch_size,
    incremental_pays,
    predicted_speedup,
)
from dnnbrain_captum.models.digits import DigitsCNN


def test_cpu_follows_the_multiply_adds() -> None:
    cpu = torch.device("cpu")
    assert incremental_pays(100, round(PATCH_PENALTY * 100) + 2, cpu)
    assert not incremental_pays(100, round(PATCH_PENALTY * 100) - 2, cpu)


def test_cpu_counts_the_moved_elements() -> None:
    cpu = torch.device("cpu")
    full = round(PATCH_PENALTY * 100) + 10 * MOVE_COST
    assert incremental_pays(100, full + 2, cpu, moved=10)
    assert not incremental_pays(100, full - 2, cpu, moved=10)


def test_accelerators_take_the_full_recompute() -> None:
    # measured on an H200: the incremental patches are launch-bound (benchmarks/README.md)
    for device in (torch.device("meta"), torch.device("cuda", 0)):
        assert not incremental_pays(1, 10**12, device)


def test_cpu_counts_written_elements_and_operations() -> None:
    cpu = torch.device("cpu")
    # Elements written cost the same on both paths: more of them on the full path favours
    # the incremental one.
    base = predicted_speedup(100, 1000, elements=(10, 10))
    assert predicted_speedup(100, 1000, elements=(10, 1000)) > base
    assert predicted_speedup(100, 1000, elements=(1000, 10)) < base
    # A fixed cost per operation and batch: tiny patches in tiny batches lose.
    assert incremental_pays(10**6, 10**8, cpu, operations=0.0)
    assert not incremental_pays(10**6, 10**8, cpu, operations=10.0)
    full = PATCH_PENALTY * 100 + ELEMENT_COST * 5 + MOVE_COST * 2 + OP_COST * 0.5
    assert incremental_pays(100, round(full) + 2, cpu, 2, 0.5, (5, 0))
    assert not incremental_pays(100, round(full) - 2, cpu, 2, 0.5, (5, 0))


def test_auto_logs_the_cost_model_numbers(caplog: pytest.LogCaptureFixture) -> None:
    """The digits CNN's class map (window 4): auto's choice agrees with the cost model, and a
    refusal names the numbers it weighed; either way the map equals the forced paths'."""
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    odm = OccluderDiscrepancyMapping(model)
    options = dict(target=3, sliding_window_shapes=4, strides=4)
    with caplog.at_level(logging.DEBUG, logger="dnnbrain_captum.attr.occlusion"):
        auto = odm.attribute(x, **options)
    engine = OutputOcclusion(model, x)
    engine.clean_targets(x, 3)
    plan = engine.sweep_plan((4, 4), (4, 4), (8, 8))
    incremental, full = engine.macs_per_window(plan)
    batch = batch_size(engine.patch_bytes(plan), x.device, 64)
    pays = incremental_pays(
        incremental,
        full,
        x.device,
        engine.moved_per_window(plan),
        len(plan.order) / batch,
        engine.elements_per_window(plan),
    )
    assert ("cost model prefers the full recompute" in caplog.text) is not pays
    if not pays:
        assert f"{full} multiply-adds" in caplog.text
    for method in ("full", "incremental"):
        forced = odm.attribute(x, method=method, **options)
        torch.testing.assert_close(auto, forced, rtol=1e-4, atol=1e-5)
