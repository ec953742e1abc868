"""The default minimal search against a brute-force oracle on grids of at most 12 parcels.

Issue 15: the default result must have the brute-force minimum number of parcels in at least
90 % of cases, and be locally minimal in every case (removing any one kept parcel drops the
response below ``activation_ratio × original``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor, nn

from dnnbrain_captum import MinimalParcelImage, digits_cnn, digits_images
from tests.helpers.region_models import RegionModel

RATIO = 0.9
# 16, the default (every round scores every parcel at these sizes), and 3 (pruned rounds, as
# on larger parcellations).
CANDIDATES = (16, 3)


def grid_labels(size: int, rows: int, cols: int) -> Tensor:
    """(size, size) labels of a rows × cols grid of near-equal blocks."""
    r = torch.arange(size) * rows // size
    c = torch.arange(size) * cols // size
    return r[:, None] * cols + c[None, :]


def all_subsets(k: int) -> Tensor:
    """Every subset of k elements as a (2**k, k) bool tensor."""
    codes = torch.arange(2**k)
    return (codes[:, None] >> torch.arange(k)[None, :]) & 1 == 1


def compose(image: Tensor, labels: Tensor, keep: Tensor) -> Tensor:
    """Images (S, C, H, W) showing the kept parcels of ``image`` over a 0 fill."""
    pixels = keep[:, labels]  # (S, H, W)
    return torch.where(pixels[:, None], image[None], torch.zeros(()))


def brute_force(
    score: Callable[[Tensor], Tensor], image: Tensor, labels: Tensor
) -> tuple[Tensor, float]:
    """Activation of every subset (2**k,) and the original activation."""
    k = int(labels.max()) + 1
    subsets = all_subsets(k)
    with torch.no_grad():
        values = torch.cat(
            [score(compose(image, labels, part)) for part in subsets.split(1024)]
        ).double()
    return values, float(values[-1])  # the last subset keeps everything


def check_case(
    model: nn.Module,
    layer: str | None,
    score: Callable[[Tensor], Tensor],
    image: Tensor,
    labels: Tensor,
    target: int,
    **options: object,
) -> list[bool] | None:
    """Run the default search (for each ``candidates_per_step`` in ``CANDIDATES``) on one case.

    Asserts the threshold and local minimality of every result; returns whether each has the
    brute-force minimum number of parcels, or None if the original is not positive.
    """
    values, original = brute_force(score, image, labels)
    if original <= 0:
        return None
    level = RATIO * original
    subsets = all_subsets(int(labels.max()) + 1)
    minimum = int(subsets.sum(1)[values >= level].min())
    hits = []
    for candidates in CANDIDATES:
        out = MinimalParcelImage(model, layer).attribute(
            image[None],
            target=target,
            feature_mask=labels,
            activation_ratio=RATIO,
            candidates_per_step=candidates,
            **options,
        )
        kept = torch.zeros(subsets.shape[1], dtype=torch.bool)
        kept[torch.unique(labels[out.masks[0]])] = True
        code = int((kept.long() << torch.arange(kept.shape[0])).sum())
        assert float(values[code]) >= level - 1e-6 * abs(level)
        for element in torch.nonzero(kept)[:, 0].tolist():
            smaller = code & ~(1 << element)
            assert float(values[smaller]) < level, (
                f"parcel {element} can be removed and the response stays above the threshold"
            )
        assert int(out.n_selected[0]) == int(kept.sum())
        hits.append(int(kept.sum()) == minimum)
    return hits


def _digits_logit(model: nn.Module, label: int) -> Callable[[Tensor], Tensor]:
    return lambda images: model(images)[:, label]


def _channel_max(front: nn.Module, channel: int) -> Callable[[Tensor], Tensor]:
    return lambda images: front(images)[:, channel].amax(dim=(1, 2))


def _random_cnn() -> nn.Sequential:
    torch.manual_seed(7)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
    ).eval()
    return net


class Case(NamedTuple):
    """One search problem: explain ``target`` of ``layer`` on ``image`` cut by ``labels``."""

    model: nn.Module
    layer: str | None
    score: Callable[[Tensor], Tensor]  # the oracle: images (S, C, H, W) -> activations (S,)
    image: Tensor
    labels: Tensor
    target: int
    options: dict[str, Any]


def cases(n_digits: int, grid: tuple[int, int]) -> Iterator[Case]:
    """Four model families (digits logits, digits conv3 channels, a region-selective model, a
    random CNN), ``n_digits`` images each, cut by a ``grid`` of parcels."""
    images, labels = digits_images("test", n=n_digits)
    model = digits_cnn()
    parcels32 = grid_labels(32, *grid)
    for k in range(n_digits):
        label = int(labels[k])
        yield Case(model, None, _digits_logit(model, label), images[k], parcels32, label, {})
    front = model.features[:7]  # conv3 after its ReLU
    with torch.no_grad():
        strongest = front(images).amax(dim=(2, 3)).argmax(1)
    for k in range(n_digits):
        channel = int(strongest[k])
        score = _channel_max(front, channel)
        yield Case(model, "conv3_relu", score, images[k], parcels32, channel, {})
    region = RegionModel(window=(3, 10, 5, 13))

    def detector(x: Tensor) -> Tensor:
        return region.relu(region.mix(x))[:, 0].mul(region.inside[0, 0]).flatten(1).mean(1)

    parcels16 = grid_labels(16, *grid)
    generator = torch.Generator().manual_seed(3)
    for _ in range(n_digits):
        image = 0.1 + torch.rand(3, 16, 16, generator=generator)
        yield Case(
            region, "detector", detector, image, parcels16, 0, {"activation_criterion": "mean"}
        )
    cnn = _random_cnn()
    for k in range(n_digits):
        yield Case(cnn, "4", _channel_max(cnn, k % 8), images[k], parcels32, k % 8, {})


def _cases(n_digits: int, grid: tuple[int, int]) -> Tensor:
    """Check every case; (cases with a positive original, len(CANDIDATES)) hits."""
    outcomes = [check_case(*case[:-1], **case.options) for case in cases(n_digits, grid)]
    return torch.tensor([o for o in outcomes if o is not None])


def test_default_search_is_locally_minimal_and_mostly_optimal_on_3x3_grids() -> None:
    hits = _cases(n_digits=5, grid=(3, 3))
    assert hits.shape[0] >= 18
    rate = hits.double().mean(0)
    assert bool((rate >= 0.9).all()), f"share at the brute-force minimum: {rate.tolist()}"


@pytest.mark.slow
def test_default_search_on_12_parcel_grids() -> None:
    hits = _cases(n_digits=10, grid=(3, 4))
    assert hits.shape[0] >= 36
    rate = hits.double().mean(0)
    # The default (column 0) is held to 90 %; the pruned rounds (measured 33/38 with 2
    # candidates, benchmarks/README.md) only to local minimality, checked in every case.
    assert float(rate[0]) >= 0.9, f"share at the brute-force minimum: {rate.tolist()}"
    assert float(rate[1]) >= 0.8, f"share at the brute-force minimum: {rate.tolist()}"
