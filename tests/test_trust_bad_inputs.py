"""Property-based bad input (Hypothesis): for every class, generated bad inputs (NaN or
infinities in the images or in a numeric option, wrong rank, empty batch, non-floating dtype,
out-of-range target channel) give a ``ValueError``/``TypeError`` naming the problem, and leave the
model (state, mode, hooks) and the input tensor exactly as they were."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from dnnbrain_captum import (
    EmpiricalReceptiveField,
    GuidedSaliencyImage,
    MaskedImage,
    MinimalComponentImage,
    MinimalParcelImage,
    OccluderDiscrepancyMapping,
    UpsamplingActivationMapping,
    VanillaSaliencyImage,
)
from dnnbrain_captum.optim import SynthesisImage
from tests.helpers.models import TinyConvNet

_GRID = (torch.arange(12) // 4)[:, None] * 3 + (torch.arange(12) // 4)[None, :]
_NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


@dataclass
class Method:
    """``run(model, x, target, **options)`` explains channel ``target`` of layer ``conv2``
    (4 channels); ``options`` lists its numeric options with a valid value each."""

    id: str
    run: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)
    any_rank: bool = False  # inputs of any rank the model accepts (saliency)


METHODS = [
    Method(
        "vanilla",
        lambda m, x, t, **o: VanillaSaliencyImage(m, "conv2").attribute(x, t, **o),
        any_rank=True,
    ),
    Method(
        "guided",
        lambda m, x, t, **o: GuidedSaliencyImage(m, "conv2").attribute(x, t, **o),
        any_rank=True,
    ),
    Method(
        "upsampling",
        lambda m, x, t, **o: UpsamplingActivationMapping(m, "conv2").attribute(x, t, **o),
        {"threshold": 0.5},
    ),
    Method(
        "occlusion",
        lambda m, x, t, **o: OccluderDiscrepancyMapping(m, "conv2").attribute(
            x, t, sliding_window_shapes=4, strides=4, **o
        ),
        {"baselines": 0.0},
    ),
    Method(
        "masked",
        lambda m, x, t, **o: MaskedImage(m, "conv2").attribute(x, t, max_iter=2, **o),
        {"stdev_size_thr": 1.0, "filter_sigma": 1.0, "target_reduction_ratio": 0.9},
    ),
    Method(
        "minimal-parcel",
        lambda m, x, t, **o: MinimalParcelImage(m, "conv2").attribute(
            x, t, feature_mask=_GRID, **o
        ),
        {"baselines": 0.0, "activation_ratio": 0.9},
    ),
    Method(
        "minimal-component",
        lambda m, x, t, **o: MinimalComponentImage(m, "conv2").attribute(x, t, patch_size=4, **o),
        {"activation_ratio": 0.9},
    ),
    Method(
        "synthesis",
        lambda m, x, t, **o: SynthesisImage(m, "conv2").attribute(x, t, n_iter=2, **o),
        {"lr": 0.05, "blur_sigma": 0.5, "fourier_factor": 1.0, "mean": 0.5, "std": 0.25},
    ),
    Method(
        "empirical-rf",
        lambda m, x, t, **o: EmpiricalReceptiveField(
            UpsamplingActivationMapping(m, "conv2")
        ).attribute(x, t, **o),
        {"size_threshold": 0.5},
    ),
]


KINDS = ["non-finite input", "rank", "empty", "dtype", "target", "option"]


def _details(kind: str, method: Method) -> st.SearchStrategy[Any]:
    """What is wrong, for one kind of bad input."""
    if kind == "non-finite input":
        position = st.tuples(*(st.integers(0, n - 1) for n in (2, 3, 12, 12)))
        return st.tuples(position, _NON_FINITE)
    if kind == "rank":
        return st.sampled_from([3, 5, 2])
    if kind == "empty":
        return st.none()
    if kind == "dtype":
        return st.sampled_from([torch.int64, torch.uint8, torch.bool, torch.complex64])
    if kind == "target":
        return st.one_of(st.integers(4, 10**9), st.integers(-(10**9), -1))
    return st.tuples(st.sampled_from(sorted(method.options)), _NON_FINITE)


def _make(
    method: Method, kind: str, detail: Any, x: Tensor
) -> tuple[Tensor, int, dict[str, Any], Any, str]:
    """The bad input, target, options, expected exception type(s) and message pattern."""
    if kind == "non-finite input":
        bad = x.clone()
        bad[detail[0]] = detail[1]
        return bad, 1, {}, ValueError, "NaN or infinite"
    if kind == "rank":
        bad = {3: x[0], 5: x[None], 2: x.flatten(1)}[detail]
        if method.any_rank:  # the model decides; torch's error gets a note naming the shape
            errors = (ValueError, TypeError, RuntimeError)
            return bad, 1, {}, errors, r"shape \(|batch"
        return bad, 1, {}, (ValueError, TypeError), re.escape(str(tuple(bad.shape)))
    if kind == "empty":
        return x[:0], 1, {}, ValueError, "empty"
    if kind == "dtype":
        return x.to(detail), 1, {}, TypeError, "floating-point"
    if kind == "target":
        return x, detail, {}, ValueError, f"target channel {detail} is out of range"
    name, value = detail
    return x, 1, {name: value}, ValueError, f"{name}.*(nan|inf|finite)"


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS, ids=[m.id for m in METHODS])
def test_bad_input_is_refused_by_name_and_changes_nothing(method: Method, kind: str) -> None:
    if kind == "option" and not method.options:
        return  # the method has no numeric option
    model = TinyConvNet().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))

    @settings(
        max_examples=5,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(detail=_details(kind, method))
    def check(detail: Any) -> None:
        bad, target, options, error, message = _make(method, kind, detail, x)
        copy, version = bad.clone(), bad._version
        with pytest.raises(error, match=message):
            method.run(model, bad, target, **{**method.options, **options})
        assert torch.equal(bad.isnan(), copy.isnan()) if bad.is_floating_point() else True
        assert torch.equal(bad.nan_to_num(), copy.nan_to_num()) and bad._version == version
        assert not model.training and _hooks(model) == 0
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key

    check()
