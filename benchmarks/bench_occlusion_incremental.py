"""Incremental occlusion (issue 7) against Captum and our own full recompute, per window.

Run: ``python benchmarks/bench_occlusion_incremental.py`` (torchvision AlexNet with random
weights, one 224×224 image, window 11, stride 2, CPU, 2 threads; ``--threads N`` to change).

For a conv3 (``features.6``) and a conv5 (``features.10``) channel, three contenders are timed
side by side in one process, alternating, best of several repetitions, per window:

* ``incremental``: ``OccluderDiscrepancyMapping(..., method="incremental")``'s engine on a
  spread subset of the 107×107 stride-2 grid (the patch sizes depend on how windows align with
  the layers' strides, so the real grid is used); ``perturbations_per_eval=BATCH`` (128);
* ``full``: ``method="full"`` — batched occluded images, early exit, only the target channel
  at the target convolution; ``perturbations_per_eval=BATCH``;
* ``captum``: ``captum.attr.Occlusion`` on a forward returning the channel mean of
  ``model.features[:k]``, ``sliding_window_shapes=(3, 11, 11)``, ``perturbations_per_eval=16``.

The full recompute and Captum cost the same for every window position, so they are timed on a
coarser grid (stride 11; Captum's ``strides=(3, 11, 11)``: 441 windows of which Captum, as always,
includes the clipped ones at the border) and divided by the number of windows evaluated.
The incremental values of the subset are checked against the full recompute of the same
windows before any time is printed, and the whole 107×107 map is also timed end to end.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from captum.attr import Occlusion
from torch import Tensor, nn
from torchvision.models import alexnet

from dnnbrain_captum import OccluderDiscrepancyMapping
from dnnbrain_captum._utils.targets import evaluate_target
from dnnbrain_captum.attr._incremental import IncrementalOcclusion
from dnnbrain_captum.attr.occlusion import occlusion_grid_shape

CHANNEL = 45
WINDOW, STRIDE = 11, 2
SIZE = 224
BATCH = 128  # our perturbations_per_eval (both paths); Captum gets 16


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def conv_macs(engine: IncrementalOcclusion, target_channels: list[int] | None) -> int:
    """Multiply-adds of the full maps up to the target (all channels except at the target)."""
    total = 0
    for k, node in enumerate(engine.graph.nodes):
        shape = engine.clean_values[k].shape
        channels = target_channels if k == engine.graph.target else None
        total += node.macs(channels, shape, shape[-2] * shape[-1])
    return total


def occluded_subset(x: Tensor, positions: Tensor, grid: tuple[int, int]) -> Tensor:
    rows, cols = positions // grid[1], positions % grid[1]
    batch = x.expand(len(positions), -1, -1, -1).clone()
    for k, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        batch[k, :, r * STRIDE : r * STRIDE + WINDOW, c * STRIDE : c * STRIDE + WINDOW] = 0.0
    return batch


def compare(
    model: nn.Module, x: Tensor, layer: str, n_windows: int, repeats: int
) -> dict[str, float]:
    module = model.get_submodule(layer)
    depth = int(layer.split(".")[1]) + 1
    grid = occlusion_grid_shape((SIZE, SIZE), (WINDOW, WINDOW), (STRIDE, STRIDE))
    positions = torch.linspace(0, grid[0] * grid[1] - 1, n_windows).round().long()
    fill = torch.zeros(1, 1, 1, 1)
    engine = IncrementalOcclusion(model, module)
    with torch.no_grad():
        clean = engine.clean_targets(x, CHANNEL, "mean")
        plan = engine.plan([CHANNEL], (WINDOW, WINDOW), (STRIDE, STRIDE), grid)

        def run_incremental() -> Tensor:
            return torch.cat(
                list(
                    engine.occluded_values(
                        fill.expand(1, *x.shape[1:]),
                        "mean",
                        (WINDOW, WINDOW),
                        (STRIDE, STRIDE),
                        grid,
                        BATCH,
                        positions,
                    )
                )
            )

        # Same windows by full recompute: the numbers must agree before timing.
        reference = torch.cat(
            [
                evaluate_target(model, module, (occluded_subset(x, chunk, grid),), CHANNEL)
                for chunk in positions.split(64)
            ]
        )
        incremental_values = run_incremental()
        error = (incremental_values - reference).abs().max().item()
        scale = (clean - reference).abs().max().item()
        if error > 1e-4 * max(scale, 1e-6) + 1e-6:
            raise SystemExit(f"{layer}: incremental differs from the full recompute by {error}")

    ours = OccluderDiscrepancyMapping(model, module)
    head = model.features[:depth]

    def channel_mean(batch: Tensor) -> Tensor:
        return head(batch)[:, CHANNEL].mean((1, 2))

    captum = Occlusion(channel_mean)
    coarse = WINDOW  # Captum needs stride <= window
    full_windows = ((SIZE - WINDOW) // coarse + 1) ** 2
    captum_windows = (-(-(SIZE - WINDOW) // coarse) + 1) ** 2

    def run_full() -> Tensor:
        return ours.attribute(
            x,
            target=CHANNEL,
            sliding_window_shapes=WINDOW,
            strides=coarse,
            perturbations_per_eval=BATCH,
            method="full",
        )

    def run_captum() -> Tensor:
        return captum.attribute(
            x,
            sliding_window_shapes=(3, WINDOW, WINDOW),
            strides=(3, coarse, coarse),
            baselines=0.0,
            perturbations_per_eval=16,
        )

    times = {"incremental": [], "full": [], "captum": []}
    for _ in range(repeats):
        times["incremental"].append(best_of(1, run_incremental) / n_windows)
        times["full"].append(best_of(1, run_full) / full_windows)
        times["captum"].append(best_of(1, run_captum) / captum_windows)

    def run_whole_map() -> Tensor:
        return ours.attribute(
            x,
            target=CHANNEL,
            sliding_window_shapes=WINDOW,
            strides=STRIDE,
            perturbations_per_eval=BATCH,
            method="incremental",
        )

    whole = best_of(1, run_whole_map)
    incremental_macs, _ = engine.macs_per_window(plan)
    return {
        "incremental": min(times["incremental"]),
        "full": min(times["full"]),
        "captum": min(times["captum"]),
        "whole_map": whole,
        "error": error,
        "macs_incremental": incremental_macs,
        "macs_full": conv_macs(engine, [CHANNEL]),
        "macs_captum": conv_macs(engine, None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=512, help="incremental subset size")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = alexnet().eval()
    x = torch.rand(1, 3, SIZE, SIZE)
    print(
        f"AlexNet (random weights), {SIZE}x{SIZE}, window {WINDOW}, stride {STRIDE}, "
        f"channel {CHANNEL}, {torch.get_num_threads()} threads, best of {args.repeats}, "
        f"perturbations_per_eval {BATCH} (ours) / 16 (Captum)"
    )
    header = (
        "| target | incremental ms/window | full ms/window | Captum ms/window | "
        "vs full | vs Captum | MMAC/window incr / full / Captum | whole 107×107 map | "
        "max abs diff |"
    )
    print(header)
    print("|" + "---|" * 9)
    for layer in ("features.6", "features.10"):
        r = compare(model, x, layer, args.windows, args.repeats)
        print(
            f"| {layer} | {r['incremental'] * 1e3:.3f} | {r['full'] * 1e3:.3f} | "
            f"{r['captum'] * 1e3:.3f} | {r['full'] / r['incremental']:.1f}x | "
            f"{r['captum'] / r['incremental']:.1f}x | "
            f"{r['macs_incremental'] / 1e6:.1f} / {r['macs_full'] / 1e6:.1f} / "
            f"{r['macs_captum'] / 1e6:.1f} | {r['whole_map']:.1f} s | {r['error']:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
