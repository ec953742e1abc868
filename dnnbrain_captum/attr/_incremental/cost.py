"""Cost model of an occlusion sweep: which path, and how many windows per batch.

Two numbers decide, per option, on the input's device:

* arithmetic and data movement: the multiply-adds per window of the incremental patches and
  of the full recompute (``macs_per_window``), and the elements the incremental path gathers
  and writes per window besides (``moved_per_window``: every operation's input region
  assembled from the clean map and the patch). Patch arithmetic runs at a lower rate than
  whole maps (:data:`PATCH_PENALTY`), and each moved element costs about :data:`MOVE_COST`
  multiply-adds (row gathers, pastes, copies): measured on the bundled digits CNN (conv5,
  32 px, 64 channels on 8×8 maps), where the patches cover most of the map, the gathers took
  longer than the patch convolutions and the incremental path was slower than the full one
  although it saves 1.8× the multiply-adds; the incremental path is chosen only when
  ``PATCH_PENALTY · MAC_incr + MOVE_COST · moved < MAC_full``;
* memory: the bytes one window needs at once (the largest activation of the full pass; the
  patches of every operation for the incremental pass). A batch holds as many windows as fit
  the device's budget: :data:`CPU_BATCH_BYTES` on a CPU (batches that spill out of the
  caches run slower per window there), an eighth of the free memory on an accelerator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dnnbrain_captum._utils.hooks import run_to_layer

__all__ = [
    "CPU_BATCH_BYTES",
    "MOVE_COST",
    "PATCH_PENALTY",
    "TRANSPOSED_PENALTY",
    "batch_size",
    "incremental_pays",
    "peak_bytes",
]

CPU_BATCH_BYTES = 48 * 2**20
PATCH_PENALTY = 1.4
TRANSPOSED_PENALTY = 1.25  # a transposed convolution's time per multiply-add, vs a direct one
MOVE_COST = 128  # multiply-adds per element gathered or written (see the module doc)
MAX_BATCH = 1024


def incremental_pays(
    incremental_macs: int, full_macs: int, device: torch.device, moved: int = 0
) -> bool:
    """Whether the incremental path is expected to be faster than the full recompute.

    On a CPU the arithmetic decides. On an accelerator the many small patch kernels are bound
    by launches, not arithmetic: measured on an H200 (benchmarks/README.md, CUDA section) the
    incremental path was 0.12-0.55x the full recompute for ResNet-18/50, VGG16 class targets
    and 0.7-0.84x for AlexNet conv3/conv5, so ``auto`` takes the full recompute there.
    """
    if device.type != "cpu":
        return False
    return PATCH_PENALTY * incremental_macs + MOVE_COST * moved < full_macs


def batch_size(bytes_per_window: int, device: torch.device, windows: int) -> int:
    """Windows per batch: as many as the device's budget holds (at least 1, at most all)."""
    budget = CPU_BATCH_BYTES
    if device.type != "cpu":
        try:
            budget = max(budget, torch.cuda.mem_get_info(device)[0] // 8)
        except (RuntimeError, AssertionError, ValueError):
            budget = 8 * CPU_BATCH_BYTES
    return int(max(1, min(windows, MAX_BATCH, budget // max(bytes_per_window, 1))))


def patch_bytes(patches: Sequence[tuple[int, int, int]], element_size: int) -> int:
    """Bytes of one window's patches: (channels, height, width) per operation."""
    return element_size * sum(c * h * w for c, h, w in patches)


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
