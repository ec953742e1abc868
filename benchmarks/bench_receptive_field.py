"""Speed of TheoreticalReceptiveField against one real forward pass of the same network.

    python benchmarks/bench_receptive_field.py [--repeats 3] [--size 224]

For each torchvision classifier (random weights, eval mode, one thread): the time to build the
whole receptive-field table (``TheoreticalReceptiveField(model, (3, H, W)).compute()``, a
shape-only pass on meta tensors) and, for scale, one forward pass of a single real image
under ``torch.no_grad()``. Best of ``--repeats``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torchvision.models as tm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dnnbrain_captum import TheoreticalReceptiveField  # noqa: E402

MODELS = [
    "alexnet",
    "vgg16",
    "resnet50",
    "googlenet",
    "inception_v3",
    "densenet121",
    "efficientnet_b0",
    "convnext_tiny",
    "mobilenet_v3_large",
    "regnet_y_400mf",
    "shufflenet_v2_x1_0",
    "squeezenet1_1",
]


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | input | layers in table | table (s) | one forward (s) |")
    print("|---|---|---|---|---|")
    for name in MODELS:
        kwargs = (
            {"aux_logits": False, "init_weights": False}
            if name in ("googlenet", "inception_v3")
            else {}
        )
        model = getattr(tm, name)(**kwargs).eval()
        side = max(args.size, 299) if name == "inception_v3" else args.size
        size = (3, side, side)
        rf = TheoreticalReceptiveField(model, size)
        table_s = best(rf.compute, args.repeats)
        x = torch.rand(1, *size)
        with torch.no_grad():
            forward_s = best(lambda: model(x), args.repeats)  # noqa: B023
        n = len(rf.compute())
        print(f"| {name} | {side}x{side} | {n} | {table_s:.3f} | {forward_s:.3f} |")


if __name__ == "__main__":
    main()
