"""Minimal-parcel removal search by incremental inference: equal to the full path, or refused.

The removal search scores, per round, the current image with one parcel removed; with
``method="incremental"`` (and under ``"auto"`` where the cost rule says so) each candidate is
computed from the clean activations of the current image as the change inside the parcel's
bounding box (``dnnbrain_captum/attr/_incremental/regions.py``). These tests hold it to the
full path: the same parcels chosen, the same activations to float tolerance, and the full
path wherever the engine cannot serve.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
from torch import nn

from dnnbrain_captum import MinimalParcelImage
from dnnbrain_captum.attr._incremental import cost, regions
from dnnbrain_captum.attr._incremental.regions import ParcelRemovals, parcel_boxes
from dnnbrain_captum.models import digits_cnn, digits_images


def alexnet_like(seed: int = 0) -> nn.Sequential:
    """AlexNet's feature stack in miniature (kernels 11/5/3, strides 4 and pools), float64."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(8, 12, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(12, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(16, 8, 3, padding=1),
    )
    with torch.no_grad():
        model[10].bias.add_(1.0)  # positive responses: the search has a threshold to keep
    return model.double().eval()


def grid_labels(size: int, step: int) -> torch.Tensor:
    """Square parcels of ``step`` pixels (the last row/column of parcels may be smaller)."""
    blocks = torch.arange(size) // step
    per_row = (size + step - 1) // step
    return blocks[:, None] * per_row + blocks[None, :]


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).double()


def run(model: nn.Module, layer: str, x: torch.Tensor, method: str, **options: object):
    return MinimalParcelImage(model, layer).attribute(x, method=method, **options)


def assert_same(a, b) -> None:
    assert torch.equal(a.masks, b.masks)
    assert torch.equal(a.n_selected, b.n_selected)
    torch.testing.assert_close(a.activation, b.activation, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("target", "criterion"),
    [(3, "max"), (5, "mean"), (1, "L2"), (2, "median"), (6, "L1"), ((4, 2, 2), "max")],
)
def test_alexnet_like_incremental_equals_full(target: object, criterion: str) -> None:
    model = alexnet_like()
    x = images(1, 96)
    options = dict(
        target=target,
        feature_mask=grid_labels(96, 16),
        activation_criterion=criterion,
        activation_ratio=0.8,
    )
    full = run(model, "10", x, "full", **options)
    assert_same(run(model, "10", x, "incremental", **options), full)
    assert_same(run(model, "10", x, "auto", **options), full)
    assert int(full.n_selected[0]) < 36  # the search removed something


def test_per_example_targets_and_exact_greedy_order() -> None:
    model = alexnet_like(1)
    x = images(2, 96, seed=3)
    options = dict(target=[1, 7], feature_mask=grid_labels(96, 24), candidates_per_step=None)
    assert_same(
        run(model, "10", x, "incremental", **options), run(model, "10", x, "full", **options)
    )


def test_digits_model_float32_same_parcels() -> None:
    x, _ = digits_images(n=3)
    model = digits_cnn()
    with torch.no_grad():
        strongest = model.features[:11](x)  # conv5 = features.10
    options = dict(
        target=strongest.amax((2, 3)).argmax(1).tolist(),
        segmentation="slic",
        segmentation_kwargs={"n_segments": 30},
    )
    full = run(digits_cnn(), "conv5", x, "full", **options)
    incremental = run(digits_cnn(), "conv5", x, "incremental", **options)
    assert torch.equal(incremental.masks, full.masks)
    torch.testing.assert_close(incremental.activation, full.activation, rtol=1e-5, atol=1e-5)


def test_candidate_values_equal_brute_force() -> None:
    """Every candidate's value against one forward per candidate image (float64)."""
    model = alexnet_like(2)
    x = images(1, 96, seed=5)
    labels = grid_labels(96, 16)[None]
    fill = torch.full((1, 3, 1, 1), -0.5, dtype=torch.float64)
    with torch.no_grad():
        original = model(x)[:, 3].amax((1, 2))
    removals = ParcelRemovals(
        model, model[10], x, fill, labels, 3, "max", original, "incremental", 64
    )
    kept = torch.rand(36, generator=torch.Generator().manual_seed(1)) < 0.7
    members = torch.nonzero(kept)[:, 0]
    values, done = removals(0, kept, members)
    assert bool(done.all())
    for j, m in enumerate(members.tolist()):
        keep = kept.clone()
        keep[m] = False
        image = torch.where(keep[labels][:, None], x, fill)
        with torch.no_grad():
            expected = model(image)[0, 3].amax()
        torch.testing.assert_close(values[j], expected, rtol=1e-10, atol=1e-12)


def test_parcel_boxes_literal() -> None:
    labels = torch.tensor([[0, 0, 1, 1], [2, 0, 1, 3], [2, 2, 2, 3]])
    assert parcel_boxes(labels, 5).tolist() == [
        [0, 0, 2, 2],
        [0, 2, 2, 2],
        [1, 0, 2, 3],
        [1, 3, 2, 1],
        [3, 3, 0, 0],  # no pixels: an empty box
    ]


# -- the cost rule ------------------------------------------------------------------------------
def _counts(caplog: pytest.LogCaptureFixture) -> dict[str, int]:
    record = next(r for r in caplog.records if "removal search:" in r.getMessage())
    return dict(record.args)  # type: ignore[arg-type]


def test_auto_mixes_both_paths_in_a_round(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups the rule sends to the full path are scored there; the parcels stay the same."""
    # Tiny networks never pay on a CPU (data movement dominates): pretend small boxes do.
    monkeypatch.setattr(
        regions, "incremental_pays", lambda inc, full, device, *rest: inc < full / 3
    )
    monkeypatch.setattr(regions, "predicted_costs", lambda inc, full, *rest: (full, inc))
    monkeypatch.setattr(regions, "CALL_COST", 0)
    model = alexnet_like(3)
    x = images(1, 96, seed=2)
    labels = grid_labels(96, 16)
    labels[:48, :48] = 100  # one big parcel among small ones
    options = dict(target=3, feature_mask=labels, activation_ratio=0.8)
    with caplog.at_level(logging.DEBUG, logger="dnnbrain_captum.attr.minimal"):
        auto = run(model, "10", x, "auto", **options)
    counts = _counts(caplog)
    assert counts["incremental"] > 0 and counts["full"] > 0
    assert_same(auto, run(model, "10", x, "full", **options))


def test_cost_rule_literal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group pays on its own; a round pays when the groups save more than a clean pass."""
    model = alexnet_like()
    x = images(1, 64)
    with torch.no_grad():
        original = model(x)[:, 3].amax((1, 2))
    removals = ParcelRemovals(
        model, model[10], x, torch.zeros(1, 3, 1, 1), grid_labels(64, 16)[None], 3, "max",
        original, "auto", 64,
    )  # fmt: skip
    table = {  # incremental and full multiply-adds; nothing moved or written, no operations
        (8, 8): regions._Costs(10, 100, 0, (0, 0), 0, 1),
        (16, 16): regions._Costs(90, 100, 0, (0, 0), 0, 1),
    }
    monkeypatch.setattr(removals, "_costs", lambda channel, window, size: table[window])
    monkeypatch.setattr(regions, "CALL_COST", 5)
    monkeypatch.setattr(cost, "PATCH_PENALTY", 2.0)
    monkeypatch.setattr(
        regions, "incremental_pays", lambda inc, full, device, *rest: inc < full / 2
    )
    small, big = ((8, 8), torch.arange(3)), ((16, 16), torch.arange(3, 5))
    # 3 × (100 − 2·10) − 5 = 235 > 100 (a clean pass): the small boxes go incremental
    assert removals._paying(3, [small, big], (64, 64)) == [small]
    # 1 × 80 − 5 = 75 < 100: not worth a clean pass
    assert removals._paying(3, [((8, 8), torch.arange(1)), big], (64, 64)) == []


def test_auto_keeps_the_full_path_where_boxes_cover_the_image(
    caplog: pytest.LogCaptureFixture,
) -> None:
    x, _ = digits_images(n=1)
    stripes = (torch.arange(32)[None, :] // 8).expand(32, 32)  # 4 parcels of full height
    with caplog.at_level(logging.DEBUG, logger="dnnbrain_captum.attr.minimal"):
        run(digits_cnn(), "conv5", x, "auto", target=1, feature_mask=stripes)
    counts = _counts(caplog)
    assert counts["incremental"] == 0 and counts["full"] > 0


# -- fallbacks and refusals ---------------------------------------------------------------------
class Flipping(nn.Module):
    """A convolution after a horizontal flip: an operation without a known footprint."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.flip(x, dims=(-1,)))


FALLBACKS = [
    ("an unsupported operation", lambda: (Flipping().eval(), "conv", 1, {})),
    ("a callable target", lambda: (alexnet_like(), "10", lambda out: out[:, 2].amax((1, 2)), {})),
    ("no layer", lambda: (alexnet_like(), None, 0, {})),
    ("training mode", lambda: (alexnet_like().train(), "10", 2, {})),
]


@pytest.mark.parametrize(("why", "case"), FALLBACKS, ids=[f[0] for f in FALLBACKS])
def test_auto_falls_back_and_incremental_refuses(why: str, case) -> None:
    model, layer, target, extra = case()
    if layer is None:
        model = nn.Sequential(model, nn.Flatten(), nn.Linear(72, 3)).double().eval()
    x = images(1, 64)
    if layer is None:
        with torch.no_grad():
            target = int(model(x).argmax())  # a class with a positive output
    options = dict(target=target, feature_mask=grid_labels(64, 16), **extra)
    with pytest.warns(UserWarning) if model.training else contextlib.nullcontext():
        full = run(model, layer, x, "full", **options)
        auto = run(model, layer, x, "auto", **options)
    assert_same(auto, full)
    with pytest.raises(ValueError, match="method='incremental' is not possible"):
        run(model, layer, x, "incremental", **options)


def test_additional_forward_args_fall_back() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3).double()

        def forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
            return self.conv(x * scale)

    model, x = Scaled().eval(), images(1, 32)
    options = dict(target=1, feature_mask=grid_labels(32, 8), additional_forward_args=(2.0,))
    assert_same(run(model, "conv", x, "auto", **options), run(model, "conv", x, "full", **options))
    with pytest.raises(ValueError, match="additional_forward_args"):
        run(model, "conv", x, "incremental", **options)


def test_a_failure_midway_falls_back_under_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = alexnet_like(), images(1, 96)
    options = dict(target=3, feature_mask=grid_labels(96, 16), activation_ratio=0.8)
    full = run(model, "10", x, "full", **options)

    def broken(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("engine failure")

    monkeypatch.setattr(regions.ParcelRemovals, "_group", broken)
    assert_same(run(model, "10", x, "auto", **options), full)
    with pytest.raises(ValueError, match="engine failure"):
        run(model, "10", x, "incremental", **options)


def test_method_is_checked() -> None:
    x = images(1, 32)
    minimal = MinimalParcelImage(alexnet_like(), "10")
    with pytest.raises(ValueError, match="method must be one of"):
        minimal.attribute(x, target=1, feature_mask=grid_labels(32, 8), method="fast")
    with pytest.raises(ValueError, match="search_criterion='removal'"):
        minimal.attribute(
            x,
            target=1,
            feature_mask=grid_labels(32, 8),
            search_criterion="max",
            method="incremental",
        )
