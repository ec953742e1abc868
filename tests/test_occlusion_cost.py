"""The cost model of `method="auto"`: arithmetic on a CPU, the full recompute on accelerators."""

import torch

from dnnbrain_captum.attr._incremental.cost import PATCH_PENALTY, incremental_pays


def test_cpu_follows_the_multiply_adds() -> None:
    cpu = torch.device("cpu")
    assert incremental_pays(100, int(PATCH_PENALTY * 100) + 1, cpu)
    assert not incremental_pays(100, int(PATCH_PENALTY * 100) - 1, cpu)


def test_accelerators_take_the_full_recompute() -> None:
    # measured on an H200: the incremental patches are launch-bound (benchmarks/README.md)
    for device in (torch.device("meta"), torch.device("cuda", 0)):
        assert not incremental_pays(1, 10**12, device)
