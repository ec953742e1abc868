"""Tests that kill the mutants of ``evaluate_target``, the index tensors' device and
``warn_if_training`` that the other tests let survive (docs/testing.md, "Mutation testing").

Every value is checked against the layer or model run by hand (the oracle) on tiny models.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import Tensor, nn

from dnnbrain_captum._utils import hooks, targets
from dnnbrain_captum._utils.baselines import baseline_images
from tests.helpers.models import TokenNet


def _raises(error: type[Exception], message: str):
    """``pytest.raises`` for the exact, whole message."""
    return pytest.raises(error, match="^" + re.escape(message) + "$")


class _Scaled(nn.Module):
    """``head(conv(x * scale))``: an extra argument that changes every value."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 3)
        self.head = nn.Conv2d(3, 4, 1)

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        return self.head(self.conv(x * scale))


def _spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Record the number of output channels of every real ``nn.functional.<name>`` call."""
    seen: list[int] = []
    original = getattr(nn.functional, name)

    def spy(inp: Tensor, weight: Tensor, *args: object) -> Tensor:
        if inp.device.type != "meta":  # not the shape-only pass that establishes the layout
            seen.append(weight.shape[0])
        return original(inp, weight, *args)

    monkeypatch.setattr(nn.functional, name, spy)
    return seen


# --- evaluate_target: every path passes the arguments on -----------------------------------


def test_model_output_target_gets_the_extra_arguments_and_taps() -> None:
    model, x = _Scaled().eval(), torch.rand(2, 2, 5, 5)
    tap = hooks.LayerCapture(model.conv)
    with torch.no_grad():
        got = targets.evaluate_target(model, None, (x,), (1, 0, 2), "mean", (2.0,), taps=[tap])
        inner = model.conv(2 * x)
        expected = model.head(inner)[:, 1, 0, 2]
        assert not torch.allclose(expected, model(x)[:, 1, 0, 2])  # the argument matters
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(tap.value, inner)


def test_fast_path_gets_the_extra_arguments_and_computes_one_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # extra arguments: no shape-only pass, the layout is decided from the layer's type
    model, x = _Scaled().eval(), torch.rand(2, 2, 5, 5)
    with torch.no_grad():
        expected = model.conv(2 * x)[:, 1].amax((1, 2))
        seen = _spy(monkeypatch, "conv2d")
        got = targets.evaluate_target(model, model.conv, (x,), 1, "max", (2.0,))
    torch.testing.assert_close(got, expected)
    assert seen == [1]  # the layer never ran: only its channel 1 was computed


def test_fast_path_on_a_linear_layer_computes_one_row(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    linear = nn.Linear(3, 4)
    model, x = nn.Sequential(linear, nn.ReLU()).eval(), torch.rand(2, 3)
    with torch.no_grad():
        expected = linear(x)[:, 2]
        seen = _spy(monkeypatch, "linear")
        got = targets.evaluate_target(model, linear, (x,), 2, "sum")
    torch.testing.assert_close(got, expected)
    assert seen == [1]


def test_unit_target_gets_the_extra_arguments() -> None:
    model, x = _Scaled().eval(), torch.rand(2, 2, 5, 5)
    with torch.no_grad():
        got = targets.evaluate_target(model, model.conv, (x,), (2, 1, 0), "mean", (2.0,))
        torch.testing.assert_close(got, model.conv(2 * x)[:, 2, 1, 0])


@pytest.mark.parametrize("target", [1, (1, 0, 2)], ids=["channel", "unit"])
def test_attribute_to_layer_input_reads_the_input(target: int | tuple[int, ...]) -> None:
    model, x = _Scaled().eval(), torch.rand(2, 2, 5, 5)
    with torch.no_grad():
        inner = model.conv(x)  # the input of head; head's output has different values
        expected = inner[:, 1].mean((1, 2)) if target == 1 else inner[:, 1, 0, 2]
        got = targets.evaluate_target(
            model, model.head, (x,), target, attribute_to_layer_input=True
        )
    torch.testing.assert_close(got, expected)


def test_the_input_of_a_layer_has_its_own_layout() -> None:
    # to_tokens takes a channels-first grid and returns tokens: its input is read as it is
    model, x = TokenNet().eval(), torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        grid = model.embed(x)
        got = targets.evaluate_target(
            model, model.to_tokens, (x,), 1, "sum", attribute_to_layer_input=True
        )
    torch.testing.assert_close(got, grid[:, 1].sum((1, 2)))


def test_extra_arguments_skip_the_shape_only_pass() -> None:
    # without a shape-only pass, a Linear's 3-D output is refused by its type
    model, x = TokenNet().eval(), torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"layer 'proj' \(Linear\) has shape \(2, 4, 3\)"):
        targets.evaluate_target(model, model.proj, (x,), 1, "mean", (2.0,))


class _FirstOnly(nn.Module):
    """Runs its layer on the first example only: the layer sees a batch of 1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(2, 3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x[:1])


def test_fast_path_checks_the_batch_of_the_layer_input() -> None:
    model = _FirstOnly().eval()
    with _raises(
        ValueError,
        "the layer Conv2d saw shape (1, 2, 5, 5) for a batch of 2 inputs; inputs must be "
        "batched, e.g. (N, C, H, W) for images",
    ):
        targets.evaluate_target(model, model.conv, (torch.rand(2, 2, 5, 5),), 1)


def test_callable_targets_see_the_raw_output_or_the_users_transform() -> None:
    model, x = TokenNet().eval(), torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        tokens = model(x)  # (2, 4, 3): 4 tokens on a 2x2 grid, 3 features
        raw = targets.evaluate_target(model, model.proj, (x,), lambda o: o[:, 3, 2], "max")
        to_grid = lambda t: t.transpose(1, 2).reshape(2, 3, 2, 2)  # noqa: E731
        moved = targets.evaluate_target(
            model, model.proj, (x,), lambda o: o[:, 2, 1, 1], "max", reshape_transform=to_grid
        )
    torch.testing.assert_close(raw, tokens[:, 3, 2])
    torch.testing.assert_close(moved, tokens[:, 3, 2])  # token 3 lies at (1, 1) of the grid


# --- index tensors follow the data, not torch's default device ------------------------------


def test_index_tensors_are_made_on_the_outputs_device() -> None:
    # Under ``torch.set_default_device`` (an accelerator in practice; ``meta`` here), index
    # tensors made without a device would be made there and read the wrong values.
    out = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    torch.manual_seed(4)
    conv, x = nn.Conv2d(2, 4, 3), torch.rand(3, 2, 5, 5)
    with torch.no_grad():
        full = conv(x)
    expected_fast = full[torch.arange(3), [2, 0, 2]].mean((1, 2))
    with torch.device("meta"), torch.no_grad():
        units = targets.select_layer_target(out, [(0, 0, 1), (2, 1, 1)])
        channels = targets.select_layer_target(out, [2, 0], "sum")
        maps = targets.channel_maps(out, [1, 2])
        fast = targets._target_channels_only(conv, x, [2, 0, 2], "mean")
        fill = baseline_images(out, 2.5, {})
    assert units.tolist() == [1.0, 23.0]
    assert channels.tolist() == [8 + 9 + 10 + 11.0, 12 + 13 + 14 + 15.0]
    assert maps.tolist() == [[[4.0, 5.0], [6.0, 7.0]], [[20.0, 21.0], [22.0, 23.0]]]
    torch.testing.assert_close(fast, expected_fast)
    assert fill.device == out.device and fill.tolist() == [[[[2.5]]]]


def _data_device() -> torch.device:
    """The accelerator when there is one (then the test crosses devices), else the CPU."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        return accelerator.current_accelerator()
    return torch.device("cpu")


def test_tensor_baselines_move_to_the_inputs_device_and_dtype() -> None:
    # A CPU baseline for inputs on an accelerator (on a CPU-only machine: CPU to CPU).
    x = torch.zeros(2, 1, 2, 2, dtype=torch.float64, device=_data_device())
    fill = baseline_images(x, torch.tensor([[[[1.5]]], [[[-2.0]]]]), {})
    assert fill.device == x.device and fill.dtype == torch.float64
    assert fill.flatten().tolist() == [1.5, -2.0]


# --- hooks.py -------------------------------------------------------------------------------


def test_training_warning_points_at_the_first_frame_outside_the_package() -> None:
    def one() -> None:
        hooks.warn_if_training(nn.Linear(1, 1))

    def two() -> None:
        one()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        two()
    (warning,) = caught
    assert warning.category is UserWarning
    assert (warning.filename, warning.lineno) == (__file__, one.__code__.co_firstlineno + 1)


class _Plain:
    """Not a module: its bound method is a forward function without modules to find."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def predict(self, x: Tensor) -> Tensor:
        return self.model(x)


def test_model_of_finds_only_modules() -> None:
    model = nn.Sequential(nn.ReLU())
    plain = _Plain(model)
    assert hooks._model_of(model) is model and hooks._model_of(model.forward) is model
    assert hooks._model_of(plain.predict) is None and hooks._model_of(print) is None
    out = hooks.run_to_layer(plain.predict, None, (torch.tensor([[-1.0, 2.0]]),))
    assert out.tolist() == [[0.0, 2.0]]


def test_tensor_baselines_are_asked_for_the_inputs_device() -> None:
    # On a CPU-only machine the move is CPU to CPU; the call must still name x's device.
    x = torch.zeros(1, 1, 2, 2)
    baseline = torch.tensor(0.5)
    asked: list[dict[str, object]] = []
    original_to = baseline.to

    def recording_to(*args: object, **kwargs: object) -> Tensor:
        asked.append(kwargs)
        return original_to(*args, **kwargs)

    baseline.to = recording_to  # type: ignore[method-assign]
    baseline_images(x, baseline, {})
    assert asked and asked[0].get("device") == x.device
