"""Hypothesis property: occlusion maps on random small CNNs equal a brute-force oracle (float64).

Every drawn network (see ``tests/helpers/random_cnn.py``) is mapped with the default
``method="auto"`` and with ``method="incremental"``; both must equal the one-window-one-forward
oracle wherever they give an answer, and ``"incremental"`` may only refuse with a
``ValueError`` naming why (in-place writes into shared values, padding modes it does not
model, ...). The CI run is bounded and derandomized; ``OCCLUSION_PROPERTY_EXAMPLES=N`` sets
another number of examples (the long run recorded in ``docs/testing.md``).
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from dnnbrain_captum import OccluderDiscrepancyMapping
from tests.helpers.random_cnn import RandomCNN, brute_force_occlusion, random_cnns

EXAMPLES = int(os.environ.get("OCCLUSION_PROPERTY_EXAMPLES", "12"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    derandomize="OCCLUSION_PROPERTY_SEED" not in os.environ,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def _fill(x: torch.Tensor, baselines: Any) -> torch.Tensor:
    if isinstance(baselines, torch.Tensor):
        return baselines.expand(-1, *x.shape[1:])
    return torch.full((1, *x.shape[1:]), float(baselines), dtype=x.dtype)


@st.composite
def problems(draw: Any, classes: bool) -> dict[str, Any]:
    size = (draw(st.integers(6, 11)), draw(st.integers(6, 11)))
    model = draw(random_cnns(size, classes=classes)).double()
    n = draw(st.integers(1, 2))
    x = torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    window = (draw(st.integers(1, size[0])), draw(st.integers(1, size[1])))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    if draw(st.booleans()):
        baselines: Any = draw(st.sampled_from([0.0, -2.0, 1.5]))
    else:
        baselines = torch.rand(draw(st.sampled_from([1, n])), 3, *size, dtype=torch.float64) * 4 - 2
    return dict(
        model=model,
        x=x.double(),
        window=window,
        stride=stride,
        baselines=baselines,
        reduction=draw(st.sampled_from(["mean", "max", "sum"])),
        unit=draw(st.booleans()),
        ppe=draw(st.sampled_from([5, 16, 64])),
    )


def _check(problem: dict[str, Any], layer: Any, target: Any) -> None:
    model: RandomCNN = problem["model"]
    x = problem["x"]
    module = model.head if layer == "head" else None
    expected = brute_force_occlusion(
        model,
        module,
        x,
        target,
        problem["window"],
        problem["stride"],
        _fill(x, problem["baselines"]),
        problem["reduction"],
    )
    # A dilated max pooling window whose taps all fall in the padding (e.g. kernel 2,
    # dilation 2, padding 1 on a 1-pixel map) gives -inf, and -inf - -inf is NaN:
    # the model's own value, the same on every path; such draws say nothing.
    assume(bool(torch.isfinite(expected).all()))
    scale = max(expected.abs().max().item(), 1.0)
    odm = OccluderDiscrepancyMapping(model, layer)
    options = dict(
        target=target,
        sliding_window_shapes=problem["window"],
        strides=problem["stride"],
        baselines=problem["baselines"],
        reduction=problem["reduction"],
        perturbations_per_eval=problem["ppe"],
    )
    auto = odm.attribute(x, **options)
    torch.testing.assert_close(auto, expected, rtol=0, atol=1e-9 * scale)
    try:
        forced = odm.attribute(x, method="incremental", **options)
    except ValueError as refusal:
        reason = str(refusal).partition("method='incremental' is not possible here: ")[2]
        # A refusal names what the engine does not model, never an internal error.
        assert reason and not re.match(r"[A-Za-z]*(Error|Exception)\b", reason), reason
        event(f"incremental refused: {re.sub(r'[0-9]+', 'N', reason)[:70]}")
        return
    event("incremental accepted")
    torch.testing.assert_close(forced, expected, rtol=0, atol=1e-9 * scale)


@PROPERTY
@given(problem=problems(classes=False), data=st.data())
def test_layer_occlusion_equals_brute_force(problem: dict[str, Any], data: Any) -> None:
    if problem["unit"]:
        out_shape = _head_shape(problem)
        target: Any = (
            data.draw(st.integers(0, 2)),
            data.draw(st.integers(0, out_shape[0] - 1)),
            data.draw(st.integers(0, out_shape[1] - 1)),
        )
    else:
        target = data.draw(st.integers(0, 2))
    _check(problem, "head", target)


@PROPERTY
@given(problem=problems(classes=True), data=st.data())
def test_class_occlusion_equals_brute_force(problem: dict[str, Any], data: Any) -> None:
    _check(problem, None, data.draw(st.integers(0, problem["model"].fc.out_features - 1)))


def _head_shape(problem: dict[str, Any]) -> tuple[int, int]:
    captured = []
    handle = problem["model"].head.register_forward_hook(lambda m, a, o: captured.append(o))
    with torch.no_grad():
        problem["model"](problem["x"][:1])
    handle.remove()
    return tuple(captured[0].shape[-2:])  # type: ignore[return-value]


@pytest.mark.parametrize("dummy", [0])
def test_generator_draws_in_place_hazards_and_padding_modes(dummy: int) -> None:
    """The generator does produce the cases the property is about (not only easy nets)."""
    seen: set[str] = set()

    @settings(max_examples=60, derandomize=True, deadline=None, database=None)
    @given(model=random_cnns((10, 11)))
    def collect(model: RandomCNN) -> None:
        seen.update(model.kinds)
        seen.update(o for o in model.options if o)
        seen.update(m.padding_mode for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        if any(getattr(m, "ceil_mode", False) for m in model.modules()):
            seen.add("ceil_mode")

    collect()
    in_place = {"relu_inplace_module", "relu_inplace_functional", "relu_method_"}
    assert in_place & seen, seen
    assert {"conv", "pool", "bn", "add", "cat", "reflect", "circular", "ceil_mode"} <= seen, seen
