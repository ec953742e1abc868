"""SynthesisImage: speed per step and activation reached, against full-network loops.

Run from the repository root::

    python benchmarks/bench_synthesis.py [--size 224] [--steps 64] [--repeats 5]
    python benchmarks/bench_synthesis.py --sweep [--presets default,lucent] [--layers conv5]

Two models side by side: torchvision AlexNet (random weights, seed 0, ImageNet normalisation)
and the bundled digits CNN. Target: conv3 (``features.6`` in both).

* Speed: seconds per optimisation step for one image, best of ``--repeats`` runs (2 threads):
  ours (plain pixels, same options as the loops, early exit at conv3, gradient w.r.t. the
  image only) against (a) DNNBrain's loop — full network forward, ``loss.backward()`` into
  every parameter — and (b) a full-network loop that takes the gradient w.r.t. the image only.
* Quality: mean conv3 activation of the returned images (no transforms) after ``--steps``
  steps for 8 channels synthesised in one batch: our default preset, the DNNBrain preset, and
  a plain-pixel Adam baseline (lr 0.05, projected to the valid range, full network), and ours
  with the baseline's options (same result, reached with the early exit).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from dnnbrain_captum import SynthesisImage, digits_cnn, random_images
from dnnbrain_captum._utils.targets import evaluate_target

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _full_loop(
    model: nn.Module,
    layer: nn.Module,
    x0: Tensor,
    channels: list[int],
    steps: int,
    lr: float,
    backward_into_params: bool,
    low: Tensor,
    high: Tensor,
) -> Tensor:
    """Activation maximisation that runs the whole network every step (DNNBrain/Lucent style)."""
    image = x0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=lr)
    captured: dict[str, Tensor] = {}
    # Clone: the in-place ReLU that follows conv3 would otherwise rewrite the captured output.
    handle = layer.register_forward_hook(lambda m, a, out: captured.__setitem__("out", out.clone()))
    index = torch.arange(len(channels))
    try:
        for _ in range(steps):
            model(image)
            out = captured["out"]
            loss = -out[index, channels].mean(dim=(1, 2)).sum()
            optimizer.zero_grad()
            if backward_into_params:
                loss.backward()  # DNNBrain: parameter gradients computed (and accumulated)
            else:
                (image.grad,) = torch.autograd.grad(loss, [image])
            optimizer.step()
            with torch.no_grad():
                image.copy_(torch.maximum(torch.minimum(image, high), low))
    finally:
        handle.remove()
        for p in model.parameters():
            p.grad = None
    return image.detach()


def _best_per_step(run: Callable[[int], Any], steps: int, repeats: int) -> float:
    run(2)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(steps)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def bench_model(
    name: str,
    model: nn.Module,
    size: int,
    mean: list[float] | None,
    std: list[float] | None,
    steps: int,
    timing_steps: int,
    repeats: int,
) -> list[str]:
    layer = model.features[6]
    rows = []
    norm = dict(mean=mean, std=std)
    m = torch.tensor(mean or [0.0] * 3).view(1, 3, 1, 1)
    s = torch.tensor(std or [1.0] * 3).view(1, 3, 1, 1)
    low, high = (0 - m) / s, (1 - m) / s
    synth = SynthesisImage(model, "features.6")

    # --- speed: one image, same plain-pixel Adam step everywhere --------------------------
    one = random_images(1, size, kind="uniform", **norm)
    pixel = dict(param="pixel", decorrelate=False, transforms="none", lr=0.05, **norm)
    ours = _best_per_step(
        lambda k: synth.attribute(one, target=[5], n_iter=k, **pixel), timing_steps, repeats
    )
    ours_default = _best_per_step(
        lambda k: synth.attribute(one, target=[5], n_iter=k, **norm), timing_steps, repeats
    )
    dnnbrain_loop = _best_per_step(
        lambda k: _full_loop(model, layer, one, [5], k, 0.05, True, low, high),
        timing_steps,
        repeats,
    )
    image_only_loop = _best_per_step(
        lambda k: _full_loop(model, layer, one, [5], k, 0.05, False, low, high),
        timing_steps,
        repeats,
    )
    rows.append(
        f"| {name} {size}px | ms/step, 1 image | ours (pixel, early exit) {ours * 1e3:.1f} "
        f"| full net + backward into params (DNNBrain) {dnnbrain_loop * 1e3:.1f} "
        f"({dnnbrain_loop / ours:.2f}x) | full net, image grad only "
        f"{image_only_loop * 1e3:.1f} ({image_only_loop / ours:.2f}x) "
        f"| ours default (fft + decorrelate + transforms) {ours_default * 1e3:.1f} |"
    )

    # --- quality: 8 channels in one batch, same number of steps ---------------------------
    step = layer.out_channels // 8
    channels = list(range(0, 8 * step, step))
    grey = random_images(len(channels), size, seed=1, **norm)
    uniform = random_images(len(channels), size, kind="uniform", seed=1, **norm)

    def activation(images: Tensor) -> float:
        with torch.no_grad():
            return float(evaluate_target(model, layer, (images,), channels).mean())

    start_value = activation(grey)
    default = synth.attribute(grey, target=channels, n_iter=steps, **norm)
    paper = synth.attribute(uniform, target=channels, n_iter=steps, preset="dnnbrain", **norm)
    plain = _full_loop(model, layer, uniform, channels, steps, 0.05, False, low, high)
    same = synth.attribute(uniform, target=channels, n_iter=steps, **pixel)  # same math, early exit
    rows.append(
        f"| {name} {size}px | mean conv3 activation after {steps} steps (8 channels) "
        f"| ours default {activation(default):.3f} | DNNBrain preset {activation(paper):.3f} "
        f"| plain-pixel Adam lr 0.05 {activation(plain):.3f} "
        f"| ours with the baseline's options {activation(same):.3f} "
        f"| initial grey {start_value:.3f} |"
    )
    return rows


DIGIT_LAYERS = [f"conv{i}{suffix}" for i in range(1, 6) for suffix in ("", "_relu")]


def sweep(presets: list[str], layers: list[str], starts: list[str]) -> None:
    """Every channel of ``layers`` of the digits CNN, each preset and start, against the data.

    The data's best = the highest channel-mean activation over the 360 held-out digits. A row
    counts the channels whose synthesis (default steps of the preset, all channels of the
    layer in one batch) is strictly above it, and the channels where both are exactly 0 (the
    channel is silent after its ReLU on every held-out digit and on the synthesis). The
    smallest margin (3 significant digits) leaves those ties out; the next column takes only
    the channels whose best digit is not exactly 0 (after the ReLU: that fire on some digit).
    """
    from dnnbrain_captum import digits_images
    from dnnbrain_captum._utils.hooks import run_to_layer
    from dnnbrain_captum._utils.layers import resolve_layer

    model = digits_cnn()
    test, _ = digits_images("test")
    print(
        "| preset | layer | start | channels | above the best digit | silent in both | "
        "smallest margin | smallest margin, channels not silent on the digits | median margin | "
        "seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in layers:
        layer = resolve_layer(model, name)
        with torch.no_grad():
            best = run_to_layer(model, layer, (test,)).mean(dim=(2, 3)).max(0).values
        channels = list(range(best.shape[0]))
        for preset in presets:
            for kind in starts:
                began = time.perf_counter()
                start = random_images(len(channels), 32, kind=kind, seed=1)
                images = SynthesisImage(model, name).attribute(
                    start, target=channels, preset=preset
                )
                with torch.no_grad():
                    reached = evaluate_target(model, layer, (images,), channels)
                margin = reached - best
                silent = (reached == 0) & (best == 0)
                print(
                    f"| {preset} | {name} | {kind} | {len(channels)} | "
                    f"{int((margin > 0).sum())} | {int(silent.sum())} | "
                    f"{float(margin[~silent].min()):.3g} | {float(margin[best != 0].min()):.3g} | "
                    f"{float(margin.median()):.3f} | "
                    f"{time.perf_counter() - began:.0f} |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="every channel of conv1-conv5 (pre and post ReLU) of the digits CNN vs the data",
    )
    parser.add_argument("--presets", default="default", help="comma-separated, for --sweep")
    parser.add_argument("--layers", default=",".join(DIGIT_LAYERS), help="for --sweep")
    parser.add_argument("--starts", default="grey,uniform", help="for --sweep")
    parser.add_argument("--size", type=int, default=224, help="AlexNet image size")
    parser.add_argument("--steps", type=int, default=64, help="steps for the quality rows")
    parser.add_argument("--timing-steps", type=int, default=5, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (best is kept)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.sweep:
        sweep(args.presets.split(","), args.layers.split(","), args.starts.split(","))
        return
    torch.manual_seed(0)
    alexnet = torchvision.models.alexnet(weights=None).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows = bench_model(
        "AlexNet (random)",
        alexnet,
        args.size,
        IMAGENET_MEAN,
        IMAGENET_STD,
        args.steps,
        args.timing_steps,
        args.repeats,
    )
    print("\n".join(rows), flush=True)
    rows = bench_model(
        "digits CNN", digits_cnn(), 32, None, None, args.steps, args.timing_steps, args.repeats
    )
    print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
