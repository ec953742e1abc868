"""Finite numbers only (DESIGN.md §9): every numeric option that enters a computation refuses
NaN and infinities with a ``ValueError`` naming the option, before anything runs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel
from torch import Tensor

from dnnbrain_captum import (
    EmpiricalReceptiveField,
    MaskedImage,
    MinimalComponentImage,
    MinimalParcelImage,
    OccluderDiscrepancyMapping,
    UpsamplingActivationMapping,
    VanillaSaliencyImage,
    smoothgrad_stdev,
)
from dnnbrain_captum._utils.baselines import baseline_images
from dnnbrain_captum._utils.validation import check_finite, check_inputs, finite, non_negative
from dnnbrain_captum.optim import SynthesisImage
from dnnbrain_captum.optim._transforms import Pad
from tests.helpers.models import TinyConvNet

_GRID = (torch.arange(12) // 4)[:, None] * 3 + (torch.arange(12) // 4)[None, :]
_MODEL = TinyConvNet().eval()


def _x() -> Tensor:
    return torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))


def _synth(**kwargs: Any) -> Any:
    return SynthesisImage(_MODEL, "conv2").attribute(_x(), target=1, n_iter=2, **kwargs)


# (option name as the error must spell it, call taking the bad value)
OPTIONS: list[tuple[str, Callable[[Any], Any]]] = [
    (
        "baselines",
        lambda v: OccluderDiscrepancyMapping(_MODEL, "conv2").attribute(
            _x(), target=1, sliding_window_shapes=4, strides=4, baselines=v
        ),
    ),
    (
        "baselines",
        lambda v: OccluderDiscrepancyMapping(_MODEL).attribute(
            _x(), target=1, sliding_window_shapes=4, strides=4, baselines=torch.tensor([0.0, v])
        ),
    ),
    (
        "baselines",
        lambda v: MinimalParcelImage(_MODEL, "conv2").attribute(
            _x(), target=1, feature_mask=_GRID, baselines=v
        ),
    ),
    (
        "baselines",
        lambda v: MinimalParcelImage(_MODEL).attribute(
            _x(), target=1, feature_mask=_GRID, baselines=torch.full((3, 1, 1), v)
        ),
    ),
    (
        "segmentation_kwargs['sigma']",
        lambda v: MinimalParcelImage(_MODEL, "conv2").attribute(
            _x(), target=1, segmentation_kwargs={"sigma": v, "scale": 10}
        ),
    ),
    (
        "activation_ratio",
        lambda v: MinimalParcelImage(_MODEL, "conv2").attribute(
            _x(), target=1, feature_mask=_GRID, activation_ratio=v
        ),
    ),
    (
        "activation_ratio",
        lambda v: MinimalComponentImage(_MODEL, "conv2").attribute(
            _x(), target=1, patch_size=4, activation_ratio=v
        ),
    ),
    (
        "threshold",
        lambda v: UpsamplingActivationMapping(_MODEL, "conv2").attribute(
            _x(), target=1, threshold=v
        ),
    ),
    (
        "stdev_size_thr",
        lambda v: MaskedImage(_MODEL, "conv2").attribute(
            _x(), target=1, stdev_size_thr=v, max_iter=2
        ),
    ),
    (
        "filter_sigma",
        lambda v: MaskedImage(_MODEL, "conv2").attribute(_x(), target=1, filter_sigma=v),
    ),
    (
        "target_reduction_ratio",
        lambda v: MaskedImage(_MODEL, "conv2").attribute(_x(), target=1, target_reduction_ratio=v),
    ),
    ("lr", lambda v: _synth(lr=v)),
    ("blur_sigma", lambda v: _synth(blur_sigma=v)),
    ("fourier_factor", lambda v: _synth(fourier_factor=v)),
    ("'l2'", lambda v: _synth(regularizers={"l2": v})),
    ("mean", lambda v: _synth(mean=v)),
    ("mean[1]", lambda v: _synth(mean=[0.5, v, 0.5])),
    ("std", lambda v: _synth(std=v)),
    ("std[2]", lambda v: _synth(std=(0.2, 0.2, v))),
    ("value_range[1]", lambda v: _synth(value_range=(0.0, v))),
    ("value_range[0]", lambda v: _synth(value_range=(v, 1.0))),
    ("Pad value", lambda v: _synth(transforms=[Pad(2, "constant", v)])),
    ("sigma_multiplier", lambda v: smoothgrad_stdev(_x(), v)),
    (
        "size_threshold",
        lambda v: EmpiricalReceptiveField(UpsamplingActivationMapping(_MODEL, "conv2")).attribute(
            _x(), target=1, size_threshold=v
        ),
    ),
]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name,call", OPTIONS, ids=[f"{k}-{o[0]}" for k, o in enumerate(OPTIONS)])
def test_non_finite_option_is_refused_by_name(name: str, call: Callable[[Any], Any], bad) -> None:
    state = {k: v.clone() for k, v in _MODEL.state_dict().items()}
    with pytest.raises(ValueError, match=r"(?s)" + _escape(name) + r".*(nan|inf|finite)"):
        call(bad)
    for key, value in _MODEL.state_dict().items():
        assert torch.equal(value, state[key])


def _escape(name: str) -> str:
    import re

    return re.escape(name)


def test_baseline_that_overflows_the_input_dtype_is_refused() -> None:
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"baselines=100000.0 \(as torch.float16\)"):
        baseline_images(x, 1e5, {})
    with pytest.raises(ValueError, match=r"baselines \(as torch.float16\)"):
        baseline_images(x, torch.tensor([1e5]), {})
    torch.testing.assert_close(
        baseline_images(x, 2, {}), torch.full((1, 1, 1, 1), 2.0, dtype=torch.float16)
    )


def test_finite_baselines_still_work() -> None:
    x = torch.zeros(2, 3, 2, 2)
    assert baseline_images(x, -3, {}).item() == -3.0
    value = baseline_images(x, torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1), {})
    assert value.shape == (1, 3, 1, 1)
    assert baseline_images(x, torch.tensor([1, 2, 3]).view(3, 1, 1), {}).dtype == x.dtype


def test_noise_tunnel_with_infinite_stdevs_is_refused_naming_stdevs() -> None:
    tunnel = NoiseTunnel(VanillaSaliencyImage(_MODEL, "conv2"))
    with pytest.raises(ValueError, match="stdevs"):
        tunnel.attribute(_x(), nt_type="smoothgrad", nt_samples=2, stdevs=math.inf, target=1)


def test_finite_and_check_finite() -> None:
    assert finite(np.float32(1.5), "a") == 1.5
    assert finite(3, "a") == 3.0 and isinstance(finite(3, "a"), float)
    for bad in (True, np.bool_(True), "1", None, torch.tensor(1.0)):
        with pytest.raises(TypeError, match="a must be a number"):
            finite(bad, "a")
    with pytest.raises(ValueError, match="a must be a finite number, got nan"):
        finite(np.float64("nan"), "a")
    with pytest.raises(ValueError, match="a must be a finite number >= 0, got -1"):
        non_negative(-1, "a")
    assert non_negative(0, "a") == 0.0
    ok = {"k": [1, 2.5, (True, "s", None)], "t": torch.ones(2), "i": torch.arange(3)}
    assert check_finite(ok, "opts") is ok
    with pytest.raises(ValueError, match=r"opts\['k'\]\[2\]\[1\] must be a finite number"):
        check_finite({"k": [1, 2, (0, math.inf)]}, "opts")
    with pytest.raises(ValueError, match=r"t must hold finite numbers only: 2 of 4 entries; "):
        check_finite(torch.tensor([[0.0, math.nan], [math.inf, 1.0]]), "t")
    with pytest.raises(ValueError, match=r"nan at index \(0, 1\)"):
        check_finite(torch.tensor([[0.0, math.nan], [math.inf, 1.0]]), "t")
    with pytest.raises(ValueError, match=r"a\[0\]"):
        check_finite([np.array([1.0, np.nan])[::-1]], "a")
    with pytest.raises(ValueError, match=r"z must hold"):
        check_finite(torch.tensor([complex(0, math.inf)]), "z")
    assert check_finite(np.array([1, 2]), "n") is not None


def test_non_finite_inputs_message_counts_and_locates() -> None:
    x = torch.zeros(2, 3)
    x[1, 2] = math.nan
    with pytest.raises(ValueError, match=r"inputs contains NaN or infinite values \(1 of 6 "):
        check_inputs(x)
