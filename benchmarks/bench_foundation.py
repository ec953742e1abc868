"""Side-by-side speed of the foundation classes (issue 2) on torchvision AlexNet.

Run: ``python benchmarks/bench_foundation.py`` (random weights, 224×224, CPU, 2 threads).
Every comparison is timed in the same process, alternating the contenders, and the best of
several repetitions is kept; the numbers are checked equal before any time is reported.
"ours" is the foundation's batched path (``method="full"``: occluded images batched, forward
stopped at the layer, only the target channel computed); the default ``method="auto"`` adds
issue 7's incremental inference and is reported beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from captum.attr import NeuronGuidedBackprop, NoiseTunnel, Occlusion
from torchvision.models import alexnet

from dnnbrain_captum import GuidedSaliencyImage, OccluderDiscrepancyMapping

torch.set_num_threads(2)
CHANNEL = 45
LAYER = "features.6"


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def occlusion(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> list[tuple[str, float]]:
    window, stride = 16, 16
    conv3 = model.features[:7]

    def channel_mean(batch: torch.Tensor) -> torch.Tensor:
        return conv3(batch)[:, CHANNEL].mean((1, 2))

    ours = OccluderDiscrepancyMapping(model, LAYER)
    captum = Occlusion(channel_mean)
    rows = (224 - window) // stride + 1
    captum_windows = (-(-(224 - window) // stride) + 1) ** 2

    def run_ours(method: str = "full") -> torch.Tensor:
        return ours.attribute(
            x,
            target=CHANNEL,
            sliding_window_shapes=window,
            strides=stride,
            perturbations_per_eval=32,
            method=method,
        )

    def run_auto() -> torch.Tensor:
        return run_ours("auto")

    def run_captum() -> torch.Tensor:
        return captum.attribute(
            x,
            sliding_window_shapes=(3, window, window),
            strides=(3, stride, stride),
            baselines=0.0,
            perturbations_per_eval=16,
        )

    def run_loop() -> torch.Tensor:
        grid = torch.zeros(rows, rows)
        captured = {}
        handle = model.features[6].register_forward_hook(
            lambda m, a, o: captured.__setitem__("out", o[0, CHANNEL].mean().item())
        )
        try:
            with torch.no_grad():
                model(x)
                base = captured["out"]
                for r in range(rows):
                    for c in range(rows):
                        occluded = x.clone()
                        occluded[
                            ..., r * stride : r * stride + window, c * stride : c * stride + window
                        ] = 0
                        model(occluded)
                        grid[r, c] = base - captured["out"]
        finally:
            handle.remove()
        return grid

    ours_grid = run_ours()[0]
    loop_grid = run_loop()
    torch.testing.assert_close(ours_grid, loop_grid, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(run_auto()[0], loop_grid, rtol=1e-4, atol=1e-4)
    # Captum's per-pixel map averages the window differences; on a window-aligned grid each
    # pixel is covered by exactly one window, so its block value is our grid entry.
    captum_map = run_captum()[0, 0]
    torch.testing.assert_close(
        captum_map[::stride, ::stride][:rows, :rows], ours_grid, rtol=1e-4, atol=1e-4
    )
    t_ours, t_auto, t_captum, t_loop = [], [], [], []
    for _ in range(repeats):
        t_ours.append(best_of(1, run_ours))
        t_auto.append(best_of(1, run_auto))
        t_captum.append(best_of(1, run_captum))
        t_loop.append(best_of(1, run_loop))
    per_ours = min(t_ours) / rows**2
    per_captum = min(t_captum) / captum_windows
    per_loop = min(t_loop) / rows**2
    per_auto = min(t_auto) / rows**2
    return [
        ("occlusion conv3 ch, ours method='full' (ms/window)", per_ours * 1e3),
        (
            "occlusion conv3 ch, ours default method='auto' = incremental (ms/window)",
            per_auto * 1e3,
        ),
        ("occlusion, captum Occlusion ppe=16 (ms/window)", per_captum * 1e3),
        ("occlusion, one window per full forward (ms/window)", per_loop * 1e3),
        ("speed-up vs captum", per_captum / per_ours),
        ("speed-up vs loop", per_loop / per_ours),
        ("default (incremental) speed-up vs captum", per_captum / per_auto),
        ("default (incremental) speed-up vs loop", per_loop / per_auto),
    ]


def guided_smoothgrad(
    model: torch.nn.Module, x: torch.Tensor, repeats: int
) -> list[tuple[str, float]]:
    ours = NoiseTunnel(GuidedSaliencyImage(model, LAYER))
    captum = NoiseTunnel(NeuronGuidedBackprop(model, model.features[6]))

    def selector(out: torch.Tensor) -> torch.Tensor:
        return out[:, CHANNEL].mean((1, 2))

    def run_ours() -> torch.Tensor:
        torch.manual_seed(0)
        return ours.attribute(x, nt_type="smoothgrad", nt_samples=16, stdevs=0.2, target=CHANNEL)

    def run_captum() -> torch.Tensor:
        torch.manual_seed(0)
        return captum.attribute(
            x, nt_type="smoothgrad", nt_samples=16, stdevs=0.2, neuron_selector=selector
        )

    torch.testing.assert_close(run_ours(), run_captum(), rtol=1e-4, atol=1e-6)
    t_ours, t_captum = [], []
    for _ in range(repeats):
        t_ours.append(best_of(1, run_ours))
        t_captum.append(best_of(1, run_captum))
    return [
        ("guided SmoothGrad x16 conv3 ch, ours (s)", min(t_ours)),
        ("guided SmoothGrad x16, captum NeuronGuidedBackprop (s)", min(t_captum)),
        ("speed-up vs captum", min(t_captum) / min(t_ours)),
    ]


def main() -> None:
    import warnings

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = alexnet().eval()
    x = torch.rand(1, 3, 224, 224)
    rows = occlusion(model, x, repeats=3) + guided_smoothgrad(model, x, repeats=3)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| measurement | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.3f} |")


if __name__ == "__main__":
    main()
