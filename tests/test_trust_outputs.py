"""Model outputs with ``layer=None``: a tuple or dict output is refused with a ``TypeError``
naming the type and the way out (``SelectOutput``); target errors talk about the model output's
classes, never about "channels of the layer"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from dnnbrain_captum import (
    GuidedSaliencyImage,
    MaskedImage,
    MinimalComponentImage,
    MinimalParcelImage,
    OccluderDiscrepancyMapping,
    SelectOutput,
    SynthesisImage,
    VanillaSaliencyImage,
)
from tests.helpers.models import TinyConvNet

_GRID = (torch.arange(12) // 4)[:, None] * 3 + (torch.arange(12) // 4)[None, :]


class _Tuple(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = TinyConvNet()
        self.eval()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.net(x)
        return logits, logits.softmax(1)


class _Dict(_Tuple):
    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        logits, probs = super().forward(x)
        return {"logits": logits, "probs": probs}


# every class that explains the model output (layer=None)
RUNS: list[tuple[str, Callable[[nn.Module, Tensor, Any], Any]]] = [
    ("vanilla", lambda m, x, t: VanillaSaliencyImage(m).attribute(x, target=t)),
    ("guided", lambda m, x, t: GuidedSaliencyImage(m).attribute(x, target=t)),
    (
        "occlusion",
        lambda m, x, t: OccluderDiscrepancyMapping(m).attribute(
            x, target=t, sliding_window_shapes=6, strides=6
        ),
    ),
    ("masked", lambda m, x, t: MaskedImage(m).attribute(x, target=t, max_iter=3)),
    (
        "minimal-parcel",
        lambda m, x, t: MinimalParcelImage(m).attribute(x, target=t, feature_mask=_GRID),
    ),
    (
        "minimal-component",
        lambda m, x, t: MinimalComponentImage(m).attribute(x, target=t, patch_size=4),
    ),
    ("synthesis", lambda m, x, t: SynthesisImage(m).attribute(x, target=t, n_iter=2)),
]
_IDS = [name for name, _ in RUNS]


def _x() -> Tensor:
    return torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("run", [r for _, r in RUNS], ids=_IDS)
@pytest.mark.parametrize(
    "model,shown", [(_Tuple, r"a tuple of 2"), (_Dict, r"a dict with keys \['logits', 'probs'\]")]
)
def test_non_tensor_model_output_is_refused_with_the_way_out(run, model, shown) -> None:
    with pytest.raises(TypeError, match=rf"(?s)the model returns {shown}.*SelectOutput"):
        run(model(), _x(), 1)


@pytest.mark.filterwarnings("ignore:the activation did not fall:UserWarning")
@pytest.mark.parametrize("run", [r for _, r in RUNS], ids=_IDS)
def test_select_output_gives_the_plain_model_result(run) -> None:
    torch.manual_seed(0)
    expected = run(_Tuple().net, _x(), [1, 3])
    for wrapped in (SelectOutput(_Tuple(), 0), SelectOutput(_Dict(), "logits")):
        torch.manual_seed(0)
        got = run(wrapped, _x(), [1, 3])
        # to float32 rounding: the plain model may take the incremental class path and the
        # wrapper the full recompute (both exact up to rounding)
        for a, b in zip(_flat(got), _flat(expected), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _flat(result: Any) -> list[Tensor]:
    if isinstance(result, Tensor):
        return [result]
    return [t for item in result for t in _flat(item)]


@pytest.mark.parametrize("run", [r for _, r in RUNS], ids=_IDS)
@pytest.mark.parametrize(
    "target,message",
    [
        (5000, r"target class 5000 is out of range: the model output has 5 classes"),
        ([0, 7], r"target class 7 is out of range: the model output has 5 classes"),
        (torch.tensor([9, 0]), r"target class 9 is out of range: the model output has 5"),
        (-1, r"target class -1 is out of range"),
    ],
)
def test_class_out_of_range_talks_about_classes(run, target, message) -> None:
    with pytest.raises(ValueError, match=message) as info:
        run(TinyConvNet().eval(), _x(), target)
    assert "layer" not in str(info.value) and "channel" not in str(info.value)


def test_unit_of_a_spatial_output_out_of_range_names_the_output_shape() -> None:
    model = nn.Conv2d(3, 2, 3).eval()
    with pytest.raises(ValueError, match=r"target \(1, 20, 0\) lies outside the model output"):
        VanillaSaliencyImage(model).attribute(_x(), target=(1, 20, 0))
    with pytest.raises(ValueError, match=r"target \(0, 1\) has 2 indices but the model output"):
        VanillaSaliencyImage(model).attribute(_x(), target=[(0, 1), (1, 1)])


def test_select_output_refuses_what_it_cannot_pick() -> None:
    with pytest.raises(TypeError, match="select must be an int, a str or a callable"):
        SelectOutput(_Tuple(), 1.5)
    with pytest.raises(TypeError, match=r"SelectOutput: select picked a tuple"):
        SelectOutput(nn.Identity(), lambda out: (out, out))(torch.ones(1, 2))
    with pytest.raises(KeyError, match="'nope'"):
        SelectOutput(_Dict(), "nope")(_x())
    wrapped = SelectOutput(_Dict(), lambda out: out["probs"])
    torch.testing.assert_close(wrapped(_x()).sum(1), torch.ones(2))
    assert wrapped.model.net.conv1 is dict(wrapped.named_modules())["model.net.conv1"]
    assert not wrapped.training and SelectOutput(_Dict().train(), 0).training
