"""SynthesisImage: speed per step and activation reached, against full-network loops.

Run from the repository root::

    python benchmarks/bench_synthesis.py [--size 224] [--steps 64] [--repeats 5]
    python benchmarks/bench_synthesis.py --sweep [--presets default,lucent] [--layers conv5]
    python benchmarks/bench_synthesis.py --silent [--layers conv3,conv4,conv5] [--hard-steps 1000]
    python benchmarks/bench_synthesis.py --timing [--threads 1]

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


def _hard_search(model: nn.Module, conv: int, channels: list[int], steps: int) -> Tensor:
    """Best pre-activation of any unit of each channel found by a search without defaults.

    Four runs per channel (grey and uniform starts × two objectives), FFT + decorrelated
    parametrisation (sigmoid: always a valid image), no transforms, no regularisers, redirected
    ReLU gradients, Adam lr 0.3: (a) a soft maximum over the channel's units
    (``τ·logsumexp(z/τ)``, τ annealed 0.3 → 0.01), (b) the centre unit alone. Returns the
    largest pre-activation seen at any step, per channel (C,).
    """
    from dnnbrain_captum.optim._param import ImageParam, ValueRange
    from dnnbrain_captum.optim._relu import redirected_relu

    chain = model.features[: conv + 1]
    k = len(channels)
    start = torch.cat(
        [random_images(2 * k, 32, kind=kind, seed=100) for kind in ("grey", "uniform")]
    )
    scale = ValueRange(3, None, None, (0.0, 1.0), torch.float32, start.device)
    image = ImageParam(start, "fft", True, scale, True)
    optimizer = torch.optim.Adam([image.tensor], lr=0.3)
    target = torch.tensor(channels * 4)
    centre = torch.tensor(([False] * k + [True] * k) * 2)
    best = torch.full((4 * k,), -torch.inf)
    for step in range(steps):
        tau = 0.3 * (0.01 / 0.3) ** (step / max(steps - 1, 1))
        with torch.enable_grad(), redirected_relu(chain):
            pre = chain(image.render())[torch.arange(4 * k), target].flatten(1)
            side = int(pre.shape[1] ** 0.5)  # square maps: the unit at (side // 2, side // 2)
            middle = pre[:, (side // 2) * side + side // 2]
            objective = torch.where(centre, middle, tau * torch.logsumexp(pre / tau, 1))
            optimizer.zero_grad()
            (-objective.sum()).backward()
        best = torch.maximum(best, pre.detach().amax(1))
        optimizer.step()
    return best.view(4, k).amax(0)


def silent(layers: list[str], hard_steps: int, bounds: bool) -> None:
    """The channels that are 0 after their ReLU on every held-out digit: can they fire?

    Per channel: the default synthesis (API, the layer's channels in one batch, seed 1) from
    grey and from noise (true rectified channel mean), the best pre-activation of any unit
    found by :func:`_hard_search`, and (``bounds``) the certified CROWN upper bound of its
    pre-activation over every image in [0, 1]^(3×32×32) (``optim/_bounds.py``).
    """
    from dnnbrain_captum import digits_images
    from dnnbrain_captum._utils.layers import resolve_layer
    from dnnbrain_captum.optim._bounds import conv_upper_bounds

    model = digits_cnn()
    test, _ = digits_images("test")
    print("| channel | best digit | default, grey | default, noise | hard search | bound |")
    print("|---|---|---|---|---|---|")
    for name in layers:
        conv = [0, 3, 6, 8, 10][int(name[-1]) - 1]
        relu = resolve_layer(model, f"{name}_relu")
        with torch.no_grad():
            best = model.features[: conv + 2](test).mean((2, 3)).amax(0)
        channels = list(range(best.shape[0]))
        reached = []
        for kind in ("grey", "uniform"):
            start = random_images(len(channels), 32, kind=kind, seed=1)
            images = SynthesisImage(model, relu).attribute(start, target=channels)
            with torch.no_grad():
                reached.append(evaluate_target(model, relu, (images,), channels))
        quiet = [c for c in channels if best[c] == 0]
        hard = _hard_search(model, conv, quiet, hard_steps) if hard_steps else None
        bound = conv_upper_bounds(model.features[: conv + 1], (3, 32, 32)) if bounds else None
        for i, c in enumerate(quiet):
            found = f"{float(hard[i]):.3g}" if hard is not None else "-"
            proven = f"{float(bound[c].max()):.3g}" if bound is not None else "-"
            print(
                f"| {name}_relu {c} | 0 | {float(reached[0][c]):.3g} | "
                f"{float(reached[1][c]):.3g} | {found} | {proven} |",
                flush=True,
            )


def timing() -> None:
    """Seconds per default synthesis on the digits CNN's ReLU layers (issue 15's extra steps).

    Run on two checkouts to compare (``PYTHONPATH=<checkout>``): one image whose channel fires
    on the digits (best of 3), one data-silent channel the default fires, one channel nothing
    fires (the whole extra budget is spent), and a whole layer in one batch (grey, seed 1).
    """
    model = digits_cnn()

    def seconds(name: str, channels: list[int], repeats: int = 1) -> float:
        start = random_images(64, 32, kind="grey", seed=1)[channels]
        best = float("inf")
        for _ in range(repeats):
            began = time.perf_counter()
            SynthesisImage(model, name).attribute(start, target=channels)
            best = min(best, time.perf_counter() - began)
        return best

    rows = [
        ("one image, conv5_relu channel 0 (fires on the digits)", "conv5_relu", [0], 3),
        ("one image, conv4_relu channel 4 (data-silent, fires)", "conv4_relu", [4], 1),
        ("one image, conv5_relu channel 6 (never fired: whole budget)", "conv5_relu", [6], 1),
        ("conv4_relu, 64 channels in one batch", "conv4_relu", list(range(64)), 1),
    ]
    print("| synthesis | seconds |\n|---|---|")
    for label, name, channels, repeats in rows:
        print(f"| {label} | {seconds(name, channels, repeats):.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="every channel of conv1-conv5 (pre and post ReLU) of the digits CNN vs the data",
    )
    parser.add_argument(
        "--silent",
        action="store_true",
        help="the post-ReLU channels silent on every held-out digit: default, search, bound",
    )
    parser.add_argument(
        "--timing", action="store_true", help="seconds per default synthesis, ReLU layers"
    )
    parser.add_argument("--hard-steps", type=int, default=1000, help="for --silent; 0: skip")
    parser.add_argument("--bounds", action="store_true", help="for --silent: CROWN bounds")
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
    if args.timing:
        timing()
        return
    if args.silent:
        silent([n for n in args.layers.split(",") if "_" not in n], args.hard_steps, args.bounds)
        return
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
