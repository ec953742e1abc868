"""Every warning of the package points at the line of the caller's code that caused it.

Python's ``warnings`` shows (and filters by) the file and line ``stacklevel`` frames up. A fixed
count breaks as soon as a decorator adds a frame (Captum's usage logger, our keyword aliases):
the warnings below pointed at ``dnnbrain_captum/_utils/aliases.py`` before they were located by
walking the stack to the first frame outside the package, Captum and PyTorch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from dnnbrain_captum import (
    GuidedSaliencyImage,
    MaskedImage,
    MinimalParcelImage,
    VanillaSaliencyImage,
)
from dnnbrain_captum.attr._sk_bridge import fit_components
from dnnbrain_captum.optim import SynthesisImage
from tests.helpers.models import FunctionalReluConv, TinyConvNet
from tests.helpers.region_models import RegionModel


def _located(call: Callable[[], Any], match: str) -> tuple[str, int]:
    """(file, line) of the one warning whose message contains ``match``.

    Compared with ``(__file__, call.__code__.co_firstlineno)``: the line of the lambda that
    calls the package.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    found = [w for w in caught if match in str(w.message)]
    assert len(found) == 1, [str(w.message) for w in caught]
    return found[0].filename, found[0].lineno


def _silent_conv() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1)).eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)
    return model


def test_masked_image_warning_points_at_the_caller() -> None:
    model = _silent_conv()
    x = torch.rand(1, 3, 8, 8)
    call = lambda: MaskedImage(model, model[0]).attribute(x, target=0, stdev_size_thr=0.0)  # noqa: E731
    assert _located(call, "baseline activation is not positive") == (
        __file__,
        call.__code__.co_firstlineno,
    )


def test_minimal_search_warning_points_at_the_caller() -> None:
    x = torch.rand(1, 3, 16, 16)
    grid = (torch.arange(16)[:, None] // 4) * 4 + torch.arange(16)[None, :] // 4
    call = lambda: MinimalParcelImage(RegionModel(), "detector").attribute(  # noqa: E731
        x, target=1, feature_mask=grid, search_criterion="removal"
    )
    assert _located(call, "original activation is not positive") == (
        __file__,
        call.__code__.co_firstlineno,
    )


def test_training_mode_warning_points_at_the_caller() -> None:
    model = TinyConvNet().train()
    x = torch.rand(1, 3, 12, 12)
    call = lambda: VanillaSaliencyImage(model).attribute(x, target=0)  # noqa: E731
    assert _located(call, "training mode") == (__file__, call.__code__.co_firstlineno)


def test_synthesis_training_warning_points_at_the_caller() -> None:
    model = TinyConvNet().train()
    call = lambda: SynthesisImage(model).attribute(torch.rand(1, 3, 12, 12), target=0, n_iter=1)  # noqa: E731
    assert _located(call, "training mode") == (__file__, call.__code__.co_firstlineno)


def test_guided_warning_points_at_the_caller() -> None:
    model = FunctionalReluConv().eval()
    call = lambda: GuidedSaliencyImage(model).attribute(torch.rand(1, 1, 5, 5), target=0)  # noqa: E731
    assert _located(call, "no nn.ReLU module ran") == (__file__, call.__code__.co_firstlineno)


def test_ica_warning_points_at_the_caller() -> None:
    samples = torch.from_numpy(np.random.default_rng(0).standard_normal((40, 6)))
    call = lambda: fit_components(samples, "ica", 4, seed=0, max_iter=1)  # noqa: E731
    assert _located(call, "FastICA did not converge") == (__file__, call.__code__.co_firstlineno)
