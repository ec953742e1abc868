"""Minimal parcel image: batched search against one forward per candidate (DNNBrain's way).

Run: ``python benchmarks/bench_minimal.py`` (torchvision AlexNet, random weights, 224×224,
CPU, 2 threads). The parcels (felzenszwalb, the seed's defaults) are computed once and given
to every contender, so only the search is timed. Each contender runs the same search: rank
the parcels by the activation each produces alone (conv5 channel, ``max`` criterion, black
fill = 0.0), evaluate every prefix of the ranking, keep the best prefix. The chosen parcels
are checked identical before any time is reported; the best of several repetitions is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.models import alexnet

from dnnbrain_captum import MinimalParcelImage
from dnnbrain_captum.attr._sk_bridge import segment

torch.set_num_threads(2)
CHANNEL = 122
LAYER = "features.10"  # DNNBrain's conv5
REPEATS = 3


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_image() -> torch.Tensor:
    """A smooth coloured scene (blobs + texture), ImageNet-normalised, shape (1, 3, 224, 224)."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 7, 7, generator=generator)
    image = F.interpolate(coarse, size=224, mode="bicubic", align_corners=False)
    image = (image + 0.08 * torch.rand(1, 3, 224, 224, generator=generator)).clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (image - mean) / std


def dnnbrain_loop(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One full forward per candidate, a hook reading conv5 (what DNNBrain does)."""
    n_parcels = int(labels.max()) + 1
    captured: dict[str, float] = {}
    handle = model.features[10].register_forward_hook(
        lambda m, a, o: captured.__setitem__("value", float(o[0, CHANNEL].max()))
    )
    try:
        with torch.no_grad():
            alone = []
            for k in range(n_parcels):
                model(torch.where(labels == k, x, torch.zeros(())))
                alone.append(captured["value"])
            order = sorted(range(n_parcels), key=lambda k: -alone[k])
            best, best_value = 0, float("-inf")
            for length in range(1, n_parcels + 1):
                keep = torch.isin(labels, torch.tensor(order[:length]))
                model(torch.where(keep, x, torch.zeros(())))
                if captured["value"] > best_value:
                    best, best_value = length, captured["value"]
    finally:
        handle.remove()
    return torch.isin(labels, torch.tensor(order[:best]))


def main() -> None:
    torch.manual_seed(0)
    model = alexnet(weights=None).eval()
    x = test_image()
    labels = segment(x[0], "felzenszwalb")
    n_parcels = int(labels.max()) + 1
    minimal = MinimalParcelImage(model, LAYER)

    def ours(batch: int) -> torch.Tensor:
        return minimal.attribute(
            x,
            target=CHANNEL,
            feature_mask=labels,
            search_criterion="max",
            activation_criterion="max",
            perturbations_per_eval=batch,
        ).masks[0]

    reference = dnnbrain_loop(model, x, labels)
    for batch in (1, 32):
        assert torch.equal(ours(batch), reference), f"different result at batch {batch}"
    loop_time = best_of(REPEATS, lambda: dnnbrain_loop(model, x, labels))
    one_time = best_of(REPEATS, lambda: ours(1))
    batched_time = best_of(REPEATS, lambda: ours(32))
    print(f"AlexNet conv5 channel {CHANNEL}, 224×224, {n_parcels} felzenszwalb parcels, ")
    print(f"{2 * n_parcels} candidates, kept {int(reference.float().mean() * 100)}% of pixels")
    print("| contender | time (s) | speed-up |")
    print("|---|---|---|")
    print(f"| one full forward per candidate (DNNBrain's way) | {loop_time:.2f} | 1.0× |")
    print(
        f"| MinimalParcelImage, perturbations_per_eval=1 (early exit) | {one_time:.2f} | "
        f"{loop_time / one_time:.1f}× |"
    )
    print(
        f"| MinimalParcelImage, perturbations_per_eval=32 | {batched_time:.2f} | "
        f"{loop_time / batched_time:.1f}× |"
    )


if __name__ == "__main__":
    main()
