"""Cost model of an occlusion sweep: which path, and how many windows per batch.

Time per window, in multiply-adds of a whole-map convolution, on a CPU:

* full recompute: ``MAC_full + ELEMENT_COST · E_full`` — the convolutions' multiply-adds and
  every output element each operation writes (``E_full``: batch norms, activations,
  concatenations run element by element and are bound by memory traffic);
* incremental: ``PATCH_PENALTY · MAC_incr + ELEMENT_COST · E_incr + MOVE_COST · moved +
  OP_COST · operations / batch`` — patch convolutions run at a lower rate than whole maps,
  the patches' elements, the elements gathered and pasted to assemble each operation's input
  region from the clean map (``moved_per_window``), and a fixed cost per operation and batch
  (index arithmetic, dispatch, small-kernel inefficiency), shared by the batch's windows.

``auto`` takes the incremental path when its predicted time is lower. The four constants were
fitted (least squares on the log of the measured speed-up, Nelder-Mead) to nine sweeps measured
side by side on the shared 2-core VM under load, one thread, 2026-12-01 (the incremental engine
of branch ``s3-speed``): class occlusion of ResNet-18 w16, ResNet-50 w32, VGG16 w32,
MobileNet-v2 w16, DenseNet-121 w16 and the digits CNN w4, AlexNet conv3/conv5 (w11, stride
11) and digits conv5 (w11, stride 2). The fit orders all of them except digits conv5 (measured
0.86x, predicted 1.05x: both paths within 15 % on a 13 ms map); with ``OP_COST`` fixed lower
(1e6-2e7, closer to pure dispatch) the digits class sweep is also mispredicted. Refit on a quiet
machine with ``benchmarks/bench_occlusion_class.py --fit`` (benchmarks/README.md).

Memory: the bytes one window needs at once (the largest activation of the full pass; the
peak of the incremental pass's live patches). A batch holds as many windows as fit the
device's budget: :data:`CPU_BATCH_BYTES` on a CPU (batches that spill out of the caches run
slower per window there), an eighth of the free memory on an accelerator.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dnnbrain_captum._utils.hooks import run_to_layer

__all__ = [
    "CPU_BATCH_BYTES",
    "CPU_PATCH_BYTES",
    "DELTA_MOVE_COST",
    "ELEMENT_COST",
    "MIN_CPU_BATCH",
    "MOVE_COST",
    "OP_COST",
    "PATCH_PENALTY",
    "TRANSPOSED_PENALTY",
    "batch_size",
    "incremental_pays",
    "peak_bytes",
    "predicted_speedup",
]

CPU_BATCH_BYTES = 48 * 2**20
# The incremental patches' budget: their small convolutions spill out of the caches sooner
# (VGG16 w32, one profile: batch-10 patch convolutions ran at 110-127 GMAC/s, batch-39 ones
# at 43-72; side by side 61 ms/window at batch 16-32 against 84 at 39).
CPU_PATCH_BYTES = 24 * 2**20
PATCH_PENALTY = 2.3  # patch convolution time per multiply-add, vs a whole-map convolution
ELEMENT_COST = 470  # multiply-adds per output element written (both paths)
MOVE_COST = 315  # multiply-adds per element gathered or pasted (incremental regions)
OP_COST = 1e8  # multiply-adds per operation and batch (incremental)
# Choosing a convolution's form (direct or from its input's change, planning._delta_pays):
# a transposed convolution's time per multiply-add against a direct one's (1.0-1.3 measured
# on AlexNet and VGG16 shapes), and the moved-element cost that gave the faster plans side by
# side (VGG16 w32, one thread, under load: 57.9 ms/window against 68.0 for the rule before and
# 64.5 without transposed convolutions; 315 keeps only 2 of its 6 transposed convolutions).
TRANSPOSED_PENALTY = 1.25
DELTA_MOVE_COST = 128
MAX_BATCH = 1024
MIN_CPU_BATCH = 16


def predicted_speedup(
    incremental_macs: int,
    full_macs: int,
    moved: int = 0,
    operations: float = 0.0,
    elements: tuple[int, int] = (0, 0),
) -> float:
    """Predicted time of the full recompute over the incremental path's, per window (CPU).

    ``operations``: incremental operations per window (operations per batch / batch size);
    ``elements``: output elements written per window, (incremental, full).
    """
    full, incremental = predicted_costs(incremental_macs, full_macs, moved, operations, elements)
    return full / max(incremental, 1e-30)


def predicted_costs(
    incremental_macs: int,
    full_macs: int,
    moved: int = 0,
    operations: float = 0.0,
    elements: tuple[int, int] = (0, 0),
) -> tuple[float, float]:
    """Predicted time per window of (the full recompute, the incremental path), CPU.

    In multiply-add equivalents (the module doc's model); arguments as
    :func:`predicted_speedup`.
    """
    full = full_macs + ELEMENT_COST * elements[1]
    incremental = (
        PATCH_PENALTY * incremental_macs
        + ELEMENT_COST * elements[0]
        + MOVE_COST * moved
        + OP_COST * operations
    )
    return full, incremental


def incremental_pays(
    incremental_macs: int,
    full_macs: int,
    device: torch.device,
    moved: int = 0,
    operations: float = 0.0,
    elements: tuple[int, int] = (0, 0),
) -> bool:
    """Whether the incremental path is expected to be faster than the full recompute.

    On a CPU the cost model of the module doc decides (:func:`predicted_speedup` > 1). On an
    accelerator the many small patch kernels are bound by launches, not arithmetic: measured on
    an H200 (benchmarks/README.md, CUDA section) the incremental path was 0.12-0.55x the full
    recompute for ResNet-18/50, VGG16 class targets and 0.7-0.84x for AlexNet conv3/conv5, so
    ``auto`` takes the full recompute there.
    """
    if device.type != "cpu":
        return False
    return predicted_speedup(incremental_macs, full_macs, moved, operations, elements) > 1.0


def batch_size(
    bytes_per_window: int,
    device: torch.device,
    windows: int,
    cpu_budget: int = CPU_BATCH_BYTES,
) -> int:
    """Windows per batch: as many as the device's budget holds (at least 1, at most all).

    ``cpu_budget``: the bytes a CPU batch may take (:data:`CPU_PATCH_BYTES` for the
    incremental patches).

    On a CPU at least :data:`MIN_CPU_BATCH` when that many take at most twice the budget:
    with one thread PyTorch runs 1×1 convolutions of smaller batches with a slow kernel
    instead of oneDNN's (ResNet-50's full path: 1.7x slower at batch 15 than at 16).
    """
    budget = cpu_budget
    if device.type != "cpu":
        try:
            budget = max(budget, torch.cuda.mem_get_info(device)[0] // 8)
        except (RuntimeError, AssertionError, ValueError):
            budget = 8 * CPU_BATCH_BYTES
    fits = budget // max(bytes_per_window, 1)
    if device.type == "cpu" and MIN_CPU_BATCH * bytes_per_window <= 2 * budget:
        fits = max(fits, MIN_CPU_BATCH)
    return int(max(1, min(windows, MAX_BATCH, fits)))


def peak_bytes(model: nn.Module, layer: nn.Module | None, image: Tensor) -> int:
    """Bytes of the largest activation of one image's forward pass (up to ``layer``).

    Measured with temporary forward hooks on the model's leaf modules (removed afterwards).
    """
    largest = [image.numel()]

    def record(module: nn.Module, args: object, out: object) -> None:
        if isinstance(out, Tensor):
            largest[0] = max(largest[0], out.numel())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.no_grad():
            run_to_layer(model, layer, (image,))
    finally:
        for handle in handles:
            handle.remove()
    return largest[0] * image.element_size()
