"""The unit atlas: its stimulus pass against a bare forward pass, and the whole atlas against the
same pieces computed one channel at a time with the public classes.

    OMP_NUM_THREADS=1 python benchmarks/bench_atlas.py [--baseline-channels 8] [--repeats 3] [--k 9]
        [--baseline-occlusion full]

Stimuli: all 1,797 scikit-learn digits (the 359 held-out and the 1,438 training images of
``digits_images``), the bundled digits CNN, layer conv5 (64 channels), one thread.

1. **Top-K pass.** ``bare``: ``model.features[:11]`` (the network up to conv5, nothing after it)
   on consecutive batches of 64 under ``torch.no_grad``, outputs dropped. ``atlas pass``: what
   ``build_atlas`` runs first: ``run_over(ChannelActivations(model, [conv5]))`` into a fresh
   folder (hooks, early exit, every channel's mean, chunks written to disk, manifest), then
   ``read_results`` and the top-K / bottom-K of every channel (``rank_stimuli``). Best of
   ``--repeats`` interleaved pairs; ratio = best atlas / best bare.
2. **Whole atlas vs one channel at a time.** ``atlas``: ``build_atlas(model, ["conv5"], all
   digits, K=9)`` with its defaults (3 syntheses of 64 steps, 8×8 occlusion windows, stride 4),
   pages and pictures included; its CPU seconds per piece are printed too. ``one channel at a
   time``: for each channel, what a user writes with the public classes: a pass over every digit to
   the layer keeping that channel's mean (a truncated ``features[:11]`` — cheaper than a hooked
   full model), its top-9 and bottom-9, then ``UpsamplingActivationMapping``,
   ``OccluderDiscrepancyMapping`` (same windows; ``method=--baseline-occlusion``, default
   ``"full"``, the faster path on this model), ``EmpiricalReceptiveField`` (upsampling engine) on
   the top 9, ``SynthesisImage`` from 3 random starts (64 steps), ``MinimalParcelImage`` on the top
   stimulus, and the theoretical field; no pictures, no pages. It is timed on
   ``--baseline-channels`` channels and scaled to 64 (each channel's work is independent of
   the others; ``--baseline-channels 64`` times all).

Before any timing a tiny atlas is built once, so that neither side pays the one-time imports
(torchvision, matplotlib, scikit-image) or first-call costs.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dnnbrain_captum import (  # noqa: E402
    EmpiricalReceptiveField,
    MinimalParcelImage,
    OccluderDiscrepancyMapping,
    SynthesisImage,
    TheoreticalReceptiveField,
    UpsamplingActivationMapping,
    digits_cnn,
    digits_images,
    random_images,
    read_results,
    run_over,
)
from dnnbrain_captum.atlas import ChannelActivations, build_atlas, rank_stimuli  # noqa: E402

BATCH = 64


def all_digits() -> torch.Tensor:
    test, _ = digits_images("test")
    train, _ = digits_images("train")
    return torch.cat([test, train])


class Clock:
    """Wall and CPU seconds (this process, user + system) of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def bare_pass(model: torch.nn.Module, images: torch.Tensor) -> Clock:
    with Clock() as clock, torch.no_grad():
        for i in range(0, len(images), BATCH):
            model.features[:11](images[i : i + BATCH])
    return clock


def atlas_pass(model: torch.nn.Module, images: torch.Tensor, k: int) -> Clock:
    with tempfile.TemporaryDirectory() as folder:
        with Clock() as clock:
            run_over(
                ChannelActivations(model, [model.features[10]]),
                images,
                out=folder,
                batch_size=BATCH,
            )
            rank_stimuli(read_results(folder), k)
        return clock


def one_channel(
    model: torch.nn.Module, images: torch.Tensor, channel: int, k: int, occlusion: str
) -> None:
    """Every piece of the atlas for one channel, with the public classes."""
    with torch.no_grad():
        means = torch.cat(
            [
                model.features[:11](images[i : i + BATCH])[:, channel].mean((1, 2))
                for i in range(0, len(images), BATCH)
            ]
        )
    order = torch.argsort(means, descending=True, stable=True)
    top, _bottom = images[order[:k]], images[order[-k:]]
    UpsamplingActivationMapping(model, "conv5").attribute(
        top, target=channel, interpolate_mode="bilinear"
    )
    OccluderDiscrepancyMapping(model, "conv5").attribute(
        top, target=channel, sliding_window_shapes=(8, 8), strides=(4, 4), method=occlusion
    )
    EmpiricalReceptiveField(UpsamplingActivationMapping(model, "conv5")).attribute(
        top, target=channel, interpolate_mode="bilinear"
    )
    TheoreticalReceptiveField(model, (3, 32, 32)).compute(until=model.features[10])
    SynthesisImage(model, "conv5").attribute(
        random_images(3, 32, seed=channel), target=channel, n_iter=64
    )
    MinimalParcelImage(model, "conv5").attribute(top[:1], target=channel)


@contextlib.contextmanager
def timed_pieces(seconds: dict[str, float]) -> Iterator[None]:
    """CPU seconds of each ``run_over`` of the atlas (by folder name) and of its pages."""
    import dnnbrain_captum.atlas._site as site
    import dnnbrain_captum.atlas.build as build

    def timing(name_of: Callable[..., str], function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                name = name_of(*args, **kwargs)
                seconds[name] = seconds.get(name, 0.0) + time.process_time() - start

        return wrapper

    originals = (build.run_over, site.write_site)
    build.run_over = timing(lambda *a, **k: Path(k["out"]).name, build.run_over)
    site.write_site = timing(lambda *a, **k: "pages", site.write_site)
    try:
        yield
    finally:
        build.run_over, site.write_site = originals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline-channels", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--baseline-occlusion", choices=["auto", "full"], default="full")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = digits_cnn()
    images = all_digits()
    print(f"{len(images)} digits, conv5, K={args.k}, 1 thread, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as folder:  # warm-up: imports, first calls
        build_atlas(
            model, ["conv5"], images[:12], folder, channels="0", top_k=2, synthesis={"n_iter": 1}
        )
        one_channel(model, images[:12], 0, 2, args.baseline_occlusion)

    bare, passes = [], []
    for r in range(args.repeats):
        pair = [
            ("bare", lambda: bare_pass(model, images)),
            ("atlas", lambda: atlas_pass(model, images, args.k)),
        ]
        for name, run in pair if r % 2 == 0 else pair[::-1]:
            (bare if name == "bare" else passes).append(run())
    wall = (min(c.wall for c in bare), min(c.wall for c in passes))
    cpu = (min(c.cpu for c in bare), min(c.cpu for c in passes))
    print(f"\n| top-K pass, best of {args.repeats} | wall s | CPU s | vs bare (wall, CPU) |")
    print("|---|---|---|---|")
    print(f"| bare forward to conv5 | {wall[0]:.3f} | {cpu[0]:.3f} | 1.00×, 1.00× |")
    print(
        f"| atlas pass (run_over + top/bottom-K) | {wall[1]:.3f} | {cpu[1]:.3f} | "
        f"{wall[1] / wall[0]:.2f}×, {cpu[1] / cpu[0]:.2f}× |"
    )

    pieces: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder, timed_pieces(pieces), Clock() as whole:
        build_atlas(model, ["conv5"], images, Path(folder) / "atlas", top_k=args.k)
    n = args.baseline_channels
    with Clock() as some:
        for channel in range(n):
            one_channel(model, images, channel, args.k, args.baseline_occlusion)
    scale = 64 / n
    print("\n| conv5, 64 channels, K = 9 | wall s | CPU s | slower than the atlas (wall, CPU) |")
    print("|---|---|---|---|")
    print(
        f"| atlas (build_atlas, pages included) | {whole.wall:.1f} | {whole.cpu:.1f} | "
        "1.00×, 1.00× |"
    )
    print(
        f"| one channel at a time, public classes ({n} timed, ×{scale:g}) | "
        f"{some.wall * scale:.1f} | {some.cpu * scale:.1f} | "
        f"{some.wall * scale / whole.wall:.2f}×, {some.cpu * scale / whole.cpu:.2f}× |"
    )
    print("\nAtlas CPU s per piece: " + ", ".join(f"{k} {v:.2f}" for k, v in pieces.items()))


if __name__ == "__main__":
    main()
