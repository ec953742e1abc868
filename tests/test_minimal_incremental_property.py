"""Hypothesis property: incremental parcel-removal scores equal brute-force forwards (float64).

For random small CNNs (``tests/helpers/random_cnn.py``), random parcellations (possibly of
several pieces each), fills, criteria and targets, every candidate of a removal round — the
current image with one kept parcel replaced by the fill — is scored by
:class:`~dnnbrain_captum.attr._incremental.regions.ParcelRemovals` (``method="incremental"``)
and by one whole forward pass per candidate image. The engine may refuse a network
(``IncrementalUnsupported`` at construction, or a ``ValueError`` naming the reason) but never
give another value. The whole search with ``method="incremental"`` must also choose the
parcels the full path chooses. ``MINIMAL_PROPERTY_EXAMPLES=N`` runs more examples.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from dnnbrain_captum import MinimalParcelImage
from dnnbrain_captum._utils.targets import reduce_per_example
from dnnbrain_captum.attr._incremental.nodes import IncrementalUnsupported
from dnnbrain_captum.attr._incremental.regions import ParcelRemovals
from tests.helpers.random_cnn import RandomCNN, random_cnns

EXAMPLES = int(os.environ.get("MINIMAL_PROPERTY_EXAMPLES", "12"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    derandomize="MINIMAL_PROPERTY_SEED" not in os.environ,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
CRITERIA = ("max", "mean", "median", "L1", "L2")


@st.composite
def parcellations(draw: Any, n: int, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) consecutive labels from a coarse random grid (a parcel may have pieces)."""
    out = []
    for _ in range(n):
        coarse = (draw(st.integers(2, 4)), draw(st.integers(2, 4)))
        k = draw(st.integers(2, 6))
        seed = draw(st.integers(0, 999))
        cells = torch.randint(0, k, coarse, generator=torch.Generator().manual_seed(seed))
        cells[0, 0], cells[-1, -1] = 0, 1  # at least two parcels
        fine = F.interpolate(cells[None, None].double(), size=size, mode="nearest")[0, 0]
        out.append(torch.unique(fine.flatten(), return_inverse=True)[1].view(size))
    return torch.stack(out)


def _head(model: RandomCNN, images: torch.Tensor) -> torch.Tensor:
    captured = []
    handle = model.head.register_forward_hook(lambda m, a, o: captured.append(o.clone()))
    try:
        with torch.no_grad():
            model(images.clone())
    finally:
        handle.remove()
    return captured[0]


def _value(out: torch.Tensor, target: Any, criterion: str) -> torch.Tensor:
    if isinstance(target, tuple):
        return out[:, target[0], target[1], target[2]]
    return reduce_per_example(out[:, target], criterion)


@st.composite
def problems(draw: Any) -> dict[str, Any]:
    size = (draw(st.integers(8, 14)), draw(st.integers(8, 14)))
    model = draw(random_cnns(size)).double()
    n = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 99))
    x = torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed)).double()
    if draw(st.booleans()):
        fill = torch.full((1, 3, 1, 1), draw(st.sampled_from([0.0, -2.0, 1.5])), dtype=x.dtype)
    else:
        fill = torch.rand(draw(st.sampled_from([1, n])), 3, *size, dtype=x.dtype) * 4 - 2
    return dict(
        model=model,
        x=x,
        fill=fill,
        labels=draw(parcellations(n, size)),
        criterion=draw(st.sampled_from(CRITERIA)),
    )


@PROPERTY
@given(problem=problems(), data=st.data())
def test_removal_scores_equal_brute_force(problem: dict[str, Any], data: Any) -> None:
    model, x, fill, labels = problem["model"], problem["x"], problem["fill"], problem["labels"]
    criterion = problem["criterion"]
    out = _head(model, x)
    assume(bool(torch.isfinite(out).all()))
    if data.draw(st.booleans()):
        target: Any = tuple(
            data.draw(st.integers(0, s - 1)) for s in (out.shape[1], *out.shape[2:])
        )
    else:
        target = data.draw(st.integers(0, out.shape[1] - 1))
    original = _value(out, target, criterion)
    try:
        removals = ParcelRemovals(
            model, model.head, x, fill, labels, target, criterion, original, "incremental", 7
        )
    except IncrementalUnsupported as refusal:
        event(f"refused: {re.sub(r'[0-9]+', 'N', str(refusal))[:60]}")
        return
    for e in range(x.shape[0]):
        count = int(labels[e].max()) + 1
        kept = torch.tensor(data.draw(st.lists(st.booleans(), min_size=count, max_size=count)))
        kept[data.draw(st.integers(0, count - 1))] = True
        members = torch.nonzero(kept)[:, 0]
        try:
            values, done = removals(e, kept, members)
        except ValueError as refusal:
            reason = str(refusal).partition("method='incremental' is not possible here: ")[2]
            assert reason and not re.match(r"[A-Za-z]*(Error|Exception)\b", reason), reason
            event("refused while scoring")
            return
        assert bool(done.all())
        candidates = []
        for m in members.tolist():
            keep = kept.clone()
            keep[m] = False
            content = fill[e if fill.shape[0] > 1 else 0]
            candidates.append(torch.where(keep[labels[e]][None], x[e], content))
        expected = _value(_head(model, torch.stack(candidates)), target, criterion)
        assume(bool(torch.isfinite(expected).all()))
        scale = max(expected.abs().max().item(), 1.0)
        torch.testing.assert_close(values, expected, rtol=0, atol=1e-9 * scale)
    event("incremental accepted")


@settings(max_examples=max(EXAMPLES // 2, 3), derandomize=True, deadline=None, database=None)
@given(problem=problems())
def test_incremental_search_chooses_the_full_paths_parcels(problem: dict[str, Any]) -> None:
    model, x = problem["model"], problem["x"]
    out = _head(model, x)
    assume(bool(torch.isfinite(out).all()))
    strongest = reduce_per_example(out.transpose(0, 1), "max").argmax()  # a channel
    target = int(strongest)
    assume(bool((reduce_per_example(out[:, target], problem["criterion"]) > 0).all()))
    minimal = MinimalParcelImage(model, model.head)
    options = dict(
        target=target,
        feature_mask=problem["labels"],
        baselines=problem["fill"],
        activation_criterion=problem["criterion"],
        activation_ratio=0.7,
    )
    full = minimal.attribute(x, method="full", **options)
    try:
        incremental = minimal.attribute(x, method="incremental", **options)
    except ValueError as refusal:
        assert "method='incremental' is not possible here" in str(refusal)
        event("search refused")
        return
    event("search accepted")
    assert torch.equal(incremental.masks, full.masks)
    torch.testing.assert_close(incremental.activation, full.activation, rtol=1e-9, atol=1e-9)
