"""The cost model of `method="auto"`: arithmetic and data movement on a CPU, the full
recompute on accelerators."""

import logging

import pytest
import torch

from dnnbrain_captum import OccluderDiscrepancyMapping
from dnnbrain_captum.attr._incremental import IncrementalOcclusion, OutputOcclusion
from dnnbrain_captum.attr._incremental.cost import (
    CPU_PATCH_BYTES,
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
    batch = batch_size(engine.patch_bytes(plan), x.device, 64, CPU_PATCH_BYTES)
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


def test_batch_holds_the_peak_of_live_patches_not_their_sum() -> None:
    """A deep chain frees each patch after its reader: one window needs the largest live
    set, far less than all its patches together (ResNet-50 w32: 3.0 MB, not 40 MB)."""
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(8):
        layers += [torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU()]
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), *layers).eval()
    x = torch.rand(1, 3, 24, 24)
    inner = IncrementalOcclusion(model, model[-1])
    inner.run_clean(x)
    plan = inner.plan(None, (4, 4), (4, 4), (6, 6))
    every = sum(
        inner.clean_values[k].shape[1] * plan.axes[k][0].length * plan.axes[k][1].length
        for k in plan.order
    )
    largest = max(
        inner.clean_values[k].shape[1] * plan.axes[k][0].length * plan.axes[k][1].length
        for k in plan.order
    )
    peak = inner.patch_bytes(plan) // x.element_size()
    assert largest < peak < every / 2  # 5480 against 15544 elements


def test_cpu_batches_hold_at_least_16_windows_when_they_fit_twice_the_budget() -> None:
    cpu = torch.device("cpu")
    budget = batch_size(1, cpu, 10**9)
    assert budget == 1024  # MAX_BATCH
    big = 48 * 2**20 // 10  # 10 windows fit the budget, 16 fit twice it
    assert batch_size(big, cpu, 100) == 16
    huge = 48 * 2**20 // 4  # 16 would take four budgets
    assert batch_size(huge, cpu, 100) == 4
    assert batch_size(big, cpu, 7) == 7  # never more than the windows
