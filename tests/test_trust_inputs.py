"""The caller's inputs are sacred (DESIGN.md §9): a model that writes in place into the tensor
it is given (``x.mul_(2)``, ``x.clamp_(...)``) never changes the caller's batch, and every class
gives the result of the same model written out of place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from dnnbrain_captum import (
    EmpiricalReceptiveField,
    GuidedSaliencyImage,
    MaskedImage,
    MinimalComponentImage,
    MinimalParcelImage,
    OccluderDiscrepancyMapping,
    SynthesisImage,
    UpsamplingActivationMapping,
    VanillaSaliencyImage,
)
from tests.helpers.models import TinyConvNet

_GRID = (torch.arange(12) // 4)[:, None] * 3 + (torch.arange(12) // 4)[None, :]


class _Scaled(TinyConvNet):
    """TinyConvNet on ``2 * x - 0.5``, computed in place into its input or out of place."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place = in_place
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = x.mul_(2).sub_(0.5) if self.in_place else x * 2 - 0.5
        return super().forward(x)


RUNS: list[tuple[str, Callable[[nn.Module, Tensor], Any]]] = [
    ("vanilla", lambda m, x: VanillaSaliencyImage(m).attribute(x, target=1)),
    ("guided", lambda m, x: GuidedSaliencyImage(m).attribute(x, target=1)),
    ("upsampling", lambda m, x: UpsamplingActivationMapping(m, "conv2").attribute(x, target=1)),
    (
        "occlusion-full",
        lambda m, x: OccluderDiscrepancyMapping(m).attribute(
            x, target=1, sliding_window_shapes=4, strides=4, method="full"
        ),
    ),
    (
        "occlusion-auto-output",
        lambda m, x: OccluderDiscrepancyMapping(m).attribute(
            x, target=1, sliding_window_shapes=4, strides=4, baselines="noise"
        ),
    ),
    (
        "occlusion-auto-layer",
        lambda m, x: OccluderDiscrepancyMapping(m, "conv2").attribute(
            x, target=1, sliding_window_shapes=4, strides=4
        ),
    ),
    (
        "occlusion-full-unit",
        lambda m, x: OccluderDiscrepancyMapping(m, "relu2").attribute(
            x, target=(1, 2, 3), sliding_window_shapes=3, strides=3, method="full"
        ),
    ),
    ("masked", lambda m, x: MaskedImage(m).attribute(x, target=1, max_iter=3)),
    (
        "minimal-parcel",
        lambda m, x: MinimalParcelImage(m).attribute(x, target=1, feature_mask=_GRID),
    ),
    (
        "minimal-component",
        lambda m, x: MinimalComponentImage(m).attribute(x, target=1, patch_size=4),
    ),
    ("synthesis", lambda m, x: SynthesisImage(m).attribute(x, target=1, n_iter=2)),
    (
        "rf-empirical",
        lambda m, x: EmpiricalReceptiveField(UpsamplingActivationMapping(m, "conv2")).attribute(
            x, target=1
        ),
    ),
]


def _tensors(result: Any) -> list[Tensor]:
    if isinstance(result, Tensor):
        return [result]
    return [v for v in result if isinstance(v, Tensor)]


@pytest.mark.parametrize("run", [r for _, r in RUNS], ids=[name for name, _ in RUNS])
def test_model_writing_into_its_input_changes_nothing_and_gives_the_out_of_place_result(
    run: Callable[[nn.Module, Tensor], Any],
) -> None:
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    kept = x.clone()
    version = x._version
    torch.manual_seed(0)
    got = _tensors(run(_Scaled(in_place=True), x))
    assert x._version == version
    torch.testing.assert_close(x, kept, rtol=0, atol=0)
    torch.manual_seed(0)
    expected = _tensors(run(_Scaled(in_place=False), x))
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _layouts(x: Tensor) -> dict[str, Tensor]:
    """Copies of ``x`` (whose two examples are equal) with other memory layouts."""
    wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1])[..., ::2]
    wide.copy_(x)
    return {
        "channels-last": x.contiguous(memory_format=torch.channels_last),
        "strided": wide,
        "expanded": x[:1].expand_as(x),  # both examples alias one buffer
        "transposed": x.transpose(2, 3).contiguous().transpose(2, 3),
    }


@pytest.mark.parametrize("run", [r for _, r in RUNS], ids=[name for name, _ in RUNS])
def test_memory_layout_never_changes_the_result(run: Callable[[nn.Module, Tensor], Any]) -> None:
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(5)).repeat(2, 1, 1, 1)
    model = _Scaled(in_place=True)
    torch.manual_seed(0)
    expected = _tensors(run(model, x))
    for name, other in _layouts(x).items():
        assert torch.equal(other, x), name
        kept = other.clone()
        torch.manual_seed(0)
        got = _tensors(run(model, other))
        torch.testing.assert_close(other, kept, rtol=0, atol=0)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(
                a, b, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
            )
