"""Tests written to kill mutants of the core plumbing that the other tests let survive
(docs/testing.md, "Mutation testing"): exact messages, boundaries and every branch of
``dnnbrain_captum/_utils/{targets,validation,baselines,hooks,outputs}.py``."""

from __future__ import annotations

import re
import warnings
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from dnnbrain_captum._utils import hooks, targets
from dnnbrain_captum._utils.baselines import baseline_images
from dnnbrain_captum._utils.outputs import SelectOutput, check_model_output, check_output_target
from dnnbrain_captum._utils.validation import (
    check_image_batch,
    check_inputs,
    pair,
    positive_int,
)
from tests.helpers.models import TokenNet


def _raises(error: type[Exception], message: str):
    """``pytest.raises`` for the exact, whole message."""
    return pytest.raises(error, match="^" + re.escape(message) + "$")


# --- targets.py ---------------------------------------------------------------------------


def test_reductions_literal_values() -> None:
    v = torch.tensor([[[3.0, -4.0], [1.0, 2.0]]])
    r = targets.reduce_per_example
    assert r(v, "mean").tolist() == [0.5]
    assert r(v, "max").tolist() == [3.0]
    assert r(v, "sum").tolist() == [2.0]
    assert r(v, "median").tolist() == [1.5]  # the mean of the two middle values
    assert r(v, "L1").tolist() == [10.0]
    assert r(v, "L2").tolist() == [pytest.approx(30**0.5)]
    with _raises(ValueError, "reduction must be one of mean, max, sum, median, L1, L2, got 'x'"):
        r(v, "x")
    assert targets.check_reduction("sum") == "sum"
    with _raises(ValueError, "reduction must be one of ('mean', 'max', 'sum'), got 'L1'"):
        targets.check_reduction("L1")


def test_index_forms() -> None:
    assert targets._as_int(np.int64(3), "t") == 3
    assert targets._as_int(torch.tensor(2), "t") == 2
    for bad in (True, torch.tensor(1.0), "1", 1.0):
        with _raises(TypeError, f"t must be an integer index, got {bad!r}"):
            targets._as_int(bad, "t")


def test_channel_and_unit_boundaries() -> None:
    assert targets._check_channel(0, 3) == 0 and targets._check_channel(2, 3) == 2
    with _raises(
        ValueError,
        "target channel 3 is out of range: the layer has 3 channels, valid channels are 0..2 "
        "(0-based)",
    ):
        targets._check_channel(3, 3)
    with pytest.raises(ValueError, match="target channel -1 is out of range"):
        targets._check_channel(-1, 3)
    assert targets._check_unit((0, 1), (1, 2)) == (0, 1)
    with _raises(
        ValueError,
        "target unit (0,) has 1 indices but the layer output has 2 non-batch dimensions of "
        "sizes (1, 2)",
    ):
        targets._check_unit((0,), (1, 2))
    with _raises(ValueError, "target unit (0, 2) lies outside the layer output of shape (1, 2)"):
        targets._check_unit((0, 2), (1, 2))
    with pytest.raises(ValueError, match="lies outside"):
        targets._check_unit((-1, 0), (1, 2))
    with pytest.raises(ValueError, match="lies outside"):
        targets._check_unit((1, 0), (1, 2))


def test_per_example_targets() -> None:
    f = targets.per_example_targets
    assert f(torch.tensor(1), 2) is None and f(3, 2) is None and f((0, 1), 2) is None
    assert f(torch.tensor([1, 0]), 2) == [1, 0] and f([2, 2], 2) == [2, 2]
    with _raises(
        ValueError, "a target tensor must be 1-D with one channel per example, got shape (1, 2)"
    ):
        f(torch.tensor([[1, 0]]), 2)
    with _raises(
        ValueError,
        "target has 3 entries but the batch has 2 examples; give one target per example or a "
        "single int/tuple/callable",
    ):
        f([0, 1, 2], 2)


def test_select_layer_target_branches() -> None:
    out = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    s = targets.select_layer_target
    assert s(out, lambda o: o[:, 0, 0, 0]).tolist() == [0.0, 12.0]
    assert s((out, out), lambda o: o[0][:, 0, 0, 0]).tolist() == [0.0, 12.0]
    with _raises(
        ValueError, "a callable target must return a Tensor of shape (N,) = (2,), got (1,)"
    ):
        s(out, lambda o: o[:1, 0, 0, 0])
    with _raises(
        ValueError, "a callable target must return a Tensor of shape (N,) = (2,), got (2, 1)"
    ):
        s(out, lambda o: o[:, 0, 0, :1])
    with _raises(
        ValueError, "a callable target must return a Tensor of shape (N,) = (None,), got float"
    ):
        s((out,), lambda o: 1.0)
    with _raises(
        ValueError,
        "the layer returns several tensors; select what to explain with a callable target",
    ):
        s((out, out), 1)
    with _raises(
        ValueError, "target is required when a layer is given: a channel, unit or callable"
    ):
        s(out, None)
    with _raises(ValueError, "the layer output has shape (2,); expected (N, C, ...)"):
        s(torch.ones(2), 0)
    assert s(torch.tensor([[1.0, 5.0], [2.0, 7.0]]), 1).tolist() == [5.0, 7.0]  # (N, K)
    assert s(out, (2, 1, 0)).tolist() == [10.0, 22.0]
    assert s(out, torch.tensor([0, 2]), "max").tolist() == [3.0, 23.0]
    assert s(out, [(0, 0, 1), [1, 1, 1]]).tolist() == [1.0, 19.0]
    assert s(out, [2, 0], "sum").tolist() == [8 + 9 + 10 + 11.0, 12 + 13 + 14 + 15.0]
    with pytest.raises(ValueError, match="reduction must be one of"):
        s(out, 1, "median")


def test_select_output_target() -> None:
    out = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert targets.select_output_target(out, 1).tolist() == [2.0, 4.0]
    assert targets.select_output_target(torch.tensor([[5.0], [6.0]]), None).tolist() == [5.0, 6.0]
    assert targets.select_output_target(torch.tensor([5.0, 6.0]), None).tolist() == [5.0, 6.0]
    with _raises(
        ValueError,
        "target=None leaves shape (2, 2) of the model output (2, 2); give a target that selects "
        "one value per example",
    ):
        targets.select_output_target(out, None)


class _Hooked(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


@pytest.mark.parametrize(
    "layer,fast",
    [
        (nn.Conv2d(2, 4, 3, padding=1), True),
        (nn.Conv2d(2, 4, 3, groups=2), False),
        (nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"), False),
        (nn.Conv2d(2, 4, 3, bias=False), True),
        (nn.Linear(2, 4), True),
        (nn.ReLU(), False),
    ],
)
def test_channel_only_fast_path_applies_exactly_when_it_may(layer: nn.Module, fast: bool) -> None:
    torch.manual_seed(0)
    assert targets._fast_channel_layer(layer, 1, False) is fast
    assert not targets._fast_channel_layer(layer, 1, True)
    assert not targets._fast_channel_layer(None, 1, False)
    assert not targets._fast_channel_layer(layer, (1, 0, 0), False)
    assert not targets._fast_channel_layer(layer, [(1, 0, 0)], False)
    assert not targets._fast_channel_layer(layer, lambda o: o[:, 0], False)
    assert targets._fast_channel_layer(layer, [], False) is fast
    handle = layer.register_forward_pre_hook(lambda m, a: None)
    assert not targets._fast_channel_layer(layer, 1, False)
    handle.remove()
    handle = layer.register_forward_hook(lambda m, a, o: None)
    assert not targets._fast_channel_layer(layer, 1, False)
    handle.remove()
    glob = nn.modules.module.register_module_forward_hook(lambda m, a, o: None)
    try:
        assert targets._has_global_forward_hooks()
        assert not targets._fast_channel_layer(layer, 1, False)
    finally:
        glob.remove()
    glob = nn.modules.module.register_module_forward_pre_hook(lambda m, a: None)
    try:
        assert targets._has_global_forward_hooks()
    finally:
        glob.remove()
    assert not targets._has_global_forward_hooks()
    # whichever path runs, the value is the full layer's
    model = _Hooked(layer).eval()
    x = torch.rand(3, 2, 5, 5) if isinstance(layer, (nn.Conv2d, nn.ReLU)) else torch.rand(3, 2)
    with torch.no_grad():
        full = layer(x)
        for target in (1, [1, 0, 1], [1, 1, 1]):
            chosen = [target] * 3 if isinstance(target, int) else target
            expected = targets.reduce_per_example(full[torch.arange(3), chosen], "max")
            got = targets.evaluate_target(model, layer, (x,), target, "max")
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_evaluate_target_errors_and_unbatched_layer_input() -> None:
    conv = nn.Conv2d(2, 4, 3)
    model = _Hooked(conv)
    with _raises(
        ValueError, "target is required when a layer is given: a channel, unit or callable"
    ):
        targets.evaluate_target(model, conv, (torch.rand(1, 2, 5, 5),), None)
    with _raises(
        ValueError,
        "the layer Conv2d saw shape (4, 3, 3) for a batch of 2 inputs; inputs must be batched, "
        "e.g. (N, C, H, W) for images",
    ):
        targets.evaluate_target(lambda x: model(x[0]), conv, (torch.rand(2, 2, 5, 5),), 1)
    with pytest.raises(ValueError, match="saw shape"):
        targets._check_batch(torch.tensor(1.0), 1, conv)
    targets._check_batch((torch.ones(3),), 1, conv)  # tuples are not checked
    with pytest.raises(ValueError, match="target channel 4 is out of range"):
        targets.evaluate_target(model, conv, (torch.rand(1, 2, 5, 5),), 4)
    with pytest.raises(ValueError, match="target channel 9 is out of range"):
        targets.evaluate_target(model, conv, (torch.rand(2, 2, 5, 5),), [0, 9])
    lin = nn.Linear(3, 2)  # a 3-D output of a Linear is features-last: refused
    with pytest.raises(ValueError, match="not channels-first"):
        targets.evaluate_target(_Hooked(lin), lin, (torch.rand(2, 4, 3),), 1, "max")


def test_layer_output_layouts_inputs_arguments_and_taps() -> None:
    model, x = TokenNet().eval(), torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        grid = model.embed(x)  # (2, 4, 2, 2)
        tokens = model.proj(model.to_tokens(grid))  # (2, 4, 3)
    on_grid = tokens.transpose(1, 2).reshape(2, 3, 2, 2)
    # the traced layout puts the tokens on their grid; the layer's output, not its input
    torch.testing.assert_close(targets.layer_output(model, model.proj, (x,)), on_grid)
    # the input of a layer has its own layout: channels-first here, tokens after it
    torch.testing.assert_close(
        targets.layer_output(model, model.to_tokens, (x,), on_input=True), grid
    )
    torch.testing.assert_close(targets.layer_output(model, model.to_tokens, (x,)), grid)
    # extra arguments: no shape-only pass, so a Linear's 3-D output is refused by its type ...
    with pytest.raises(ValueError, match=r"layer 'proj' \(Linear\) has shape \(2, 4, 3\)"):
        targets.layer_output(model, model.proj, (x,), 2.0)
    # ... and they reach the model (a reshape_transform makes the output readable)
    doubled = targets.layer_output(
        model, model.proj, (x,), (2.0,), reshape_transform=lambda t: t.transpose(1, 2)
    )
    with torch.no_grad():
        expected = model.proj(model.to_tokens(model.embed(2 * x))).transpose(1, 2)
    torch.testing.assert_close(doubled, expected)
    tap = hooks.LayerCapture(model.embed)
    targets.layer_output(model, model.proj, (x,), taps=[tap])
    torch.testing.assert_close(tap.value, grid)


def test_channel_maps_branches() -> None:
    out = torch.arange(12.0).view(2, 3, 2)
    assert targets.channel_maps(out, 1).tolist() == [[2.0, 3.0], [8.0, 9.0]]
    assert targets.channel_maps(out, [2, 0]).tolist() == [[4.0, 5.0], [6.0, 7.0]]
    with _raises(
        ValueError, "this method maps a channel: give target as an int or one int per example"
    ):
        targets.channel_maps(out, lambda o: o)
    with _raises(
        ValueError, "this method maps a whole channel, got the unit (1, 0); give the channel index"
    ):
        targets.channel_maps(out, (1, 0))
    with _raises(ValueError, "target is required: the channel whose map is computed"):
        targets.channel_maps(out, None)
    with pytest.raises(ValueError, match="target channel 3 is out of range"):
        targets.channel_maps(out, 3)


def test_take_examples() -> None:
    a, scalar, other = torch.arange(3), torch.tensor(5), torch.arange(4)
    index = torch.tensor([2, 0])
    assert targets.take_examples(None, index, 3) is None
    assert targets.take_examples(a, index, 3).tolist() == [2, 0]
    taken = targets.take_examples((a, scalar, other, "s"), index, 3)
    assert isinstance(taken, tuple) and taken[0].tolist() == [2, 0]
    assert taken[1] is scalar and taken[2] is other and taken[3] == "s"


# --- validation.py ------------------------------------------------------------------------


def test_check_inputs_messages() -> None:
    with _raises(ValueError, "inputs is an empty tuple; expected at least one tensor"):
        check_inputs(())
    with _raises(TypeError, "inputs must be a torch.Tensor, got list"):
        check_inputs([1.0])
    with _raises(TypeError, "x[1] must be a torch.Tensor, got int"):
        check_inputs((torch.ones(1), 3), "x")
    with _raises(ValueError, "inputs has shape (): the batch is empty"):
        check_inputs(torch.tensor(1.0))
    with _raises(ValueError, "inputs has shape (0, 2): the batch is empty"):
        check_inputs(torch.ones(0, 2))
    with _raises(TypeError, "inputs must be a floating-point tensor, got torch.int64"):
        check_inputs(torch.ones(1, dtype=torch.long))
    with _raises(ValueError, "the tensors of inputs have different batch sizes"):
        check_inputs((torch.ones(1, 2), torch.ones(2, 2)))
    assert len(check_inputs((torch.ones(2, 1), torch.ones(2)))) == 2
    with _raises(
        ValueError,
        "inputs contains NaN or infinite values (1 of 2 entries; inf at index (0, 1)); under "
        "captum's NoiseTunnel, check that stdevs is finite",
    ):
        check_inputs(torch.tensor([[0.0, float("inf")]]))
    with _raises(TypeError, "inputs must be one image tensor (N, C, H, W), not a tuple"):
        check_image_batch((torch.ones(1, 1, 1, 1),))
    with _raises(ValueError, "images must have shape (N, C, H, W), got 3-D shape (1, 2, 3)"):
        check_image_batch(torch.ones(1, 2, 3), "images")
    with _raises(TypeError, "inputs must be a torch.Tensor, got str"):
        check_image_batch("x")


def test_pair_and_positive_int() -> None:
    assert pair(3, "w") == (3, 3) and pair([2, 4], "w") == (2, 4) and pair((0, 0), "w", 0)
    for bad in (True, 1.5, (1, 2, 3), "ab", None):
        with _raises(TypeError, f"w must be an int or an (H, W) pair of ints, got {bad!r}"):
            pair(bad, "w")
    for bad in ((1, True), (1, 2.0)):
        with _raises(TypeError, f"w must contain ints, got {bad!r}"):
            pair(bad, "w")
    with _raises(ValueError, "w=(1, 0): every entry must be >= 1"):
        pair((1, 0), "w")
    with _raises(ValueError, "w=(2, 1): every entry must be >= 2"):
        pair((2, 1), "w", 2)
    assert positive_int(1, "n") == 1
    for bad in (0, -1, True, 1.0, "1"):
        with _raises(ValueError, f"n must be an int >= 1, got {bad!r}"):
            positive_int(bad, "n")


# --- baselines.py -------------------------------------------------------------------------


def test_baseline_images_branches() -> None:
    x = torch.arange(8.0).view(2, 1, 2, 2)
    named = {"mean": lambda x: x.mean((2, 3), keepdim=True), "zero": lambda x: x * 0}
    assert baseline_images(x, "mean", named).flatten().tolist() == [1.5, 5.5]
    with _raises(ValueError, "baselines must be a number, a tensor or 'mean' or 'zero', got 'x'"):
        baseline_images(x, "x", named)
    with _raises(ValueError, "baselines must be a number or a tensor, got 'mean'"):
        baseline_images(x, "mean", {})
    with _raises(TypeError, "baselines must be a number or a tensor, got True"):
        baseline_images(x, True, {})
    with _raises(TypeError, "baselines must be a number or a tensor, got list"):
        baseline_images(x, [0.0], {})
    value = baseline_images(x, 2, {})
    assert value.shape == (1, 1, 1, 1) and value.dtype == x.dtype and value.item() == 2.0
    per = baseline_images(x, torch.tensor([[[[1.0]]], [[[2.0]]]], dtype=torch.float64), {})
    assert per.shape == (2, 1, 1, 1) and per.dtype == torch.float32
    assert baseline_images(x, torch.tensor(3.0), {}).shape == (1, 1, 1, 1)
    with _raises(
        ValueError, "baselines of shape (3,) does not broadcast to the inputs (2, 1, 2, 2)"
    ):
        baseline_images(x, torch.ones(3), {})
    with _raises(ValueError, "baselines has 3 examples but the batch has 1"):
        baseline_images(torch.zeros(1, 2, 2, 2), torch.zeros(3, 1, 1, 1), {})


# --- hooks.py -----------------------------------------------------------------------------


def test_removing_clears_and_removes() -> None:
    module = nn.ReLU()
    with hooks.removing([]) as handles:
        handles.append(module.register_forward_hook(lambda m, a, o: None))
        assert len(module._forward_hooks) == 1
    assert handles == [] and len(module._forward_hooks) == 0


def test_warn_if_training_once_per_model() -> None:
    model = nn.Linear(1, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hooks.warn_if_training(model)
        hooks.warn_if_training(model)
        hooks.warn_if_training(nn.Linear(1, 1).eval())
        hooks.warn_if_training(lambda x: x)
    assert len(caught) == 1
    assert str(caught[0].message) == (
        "Linear is in training mode: dropout and batch norm make the attributions random; "
        "call model.eval() first if that is not intended"
    )
    assert caught[0].category is UserWarning


class _TwoArgs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _Scale()
        self.after = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        return self.after(self.inner(x, scale))


class _Scale(nn.Module):
    def forward(self, x: Tensor, scale: float) -> Tensor:
        return x * scale


def test_layer_capture_and_run_to_layer() -> None:
    model = _TwoArgs()
    x = -torch.ones(1, 2)
    seen = hooks.run_to_layer(model, model.inner, (x,), 3.0, on_input=True)
    assert seen[0] is not x and torch.equal(seen[0], x) and seen[1:] == (3.0,)  # a copy of x
    out = hooks.run_to_layer(model, model.inner, (x,), (2.0,))
    assert out.tolist() == [[-2.0, -2.0]]
    assert hooks.run_to_layer(model, None, (x,), None).tolist() == [[0.0, 0.0]]
    tap = hooks.LayerCapture(model.inner)  # not stopping: the in-place ReLU gets a clone
    tap_in = hooks.LayerCapture(model.after, on_input=True)
    final = hooks.run_to_layer(model, None, (x,), 2.0, taps=[tap, tap_in])
    assert tap.value.tolist() == [[-2.0, -2.0]] and final.tolist() == [[0.0, 0.0]]
    assert tap_in.value.tolist() == [[-2.0, -2.0]]
    assert all(len(m._forward_hooks) + len(m._forward_pre_hooks) == 0 for m in model.modules())
    with _raises(
        RuntimeError,
        "the layer Linear never ran during the forward pass; is it part of the model's forward "
        "computation?",
    ):
        hooks.run_to_layer(model, nn.Linear(1, 1), (x,))


def test_layer_capture_records_the_first_call_and_keeps_later_args() -> None:
    shared = _Scale()

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.s = shared

        def forward(self, x: Tensor) -> Tensor:
            return self.s(self.s(x, 2.0), 3.0)

    model = Twice()
    first = hooks.LayerCapture(shared)
    first_in = hooks.LayerCapture(shared, on_input=True)
    out = hooks.run_to_layer(model, None, (torch.ones(1),), taps=[first, first_in])
    assert first.value.tolist() == [2.0] and out.tolist() == [6.0]
    assert first_in.value[0].tolist() == [1.0] and first_in.value[1] == 2.0
    single = hooks.LayerCapture(nn.ReLU(), on_input=True)
    assert single._pre_hook(single.module, (torch.ones(1),))[0].tolist() == [1.0]
    assert single.value.tolist() == [1.0]
    assert hooks.LayerCapture(nn.ReLU())._record((torch.ones(1),)) is None


def test_watching_modules_paths_and_order() -> None:
    model = nn.Sequential(nn.ReLU(), nn.Sequential(nn.Identity()))
    events: list[tuple[str, str]] = []
    with hooks.watching_modules(
        model,
        lambda p, m, a, k: events.append(("in", p)),
        lambda p, m, o: events.append(("out", p)),
    ):
        model(torch.ones(1))
    assert events == [
        ("in", ""),
        ("in", "0"),
        ("out", "0"),
        ("in", "1"),
        ("in", "1.0"),
        ("out", "1.0"),
        ("out", "1"),
        ("out", ""),
    ]
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


def test_guided_relu_rule_and_counter() -> None:
    relu = nn.ReLU()
    x = torch.tensor([-1.0, 2.0, 3.0], requires_grad=True)
    with hooks.guided_relu(relu) as calls:
        y = relu(x)
        y.backward(torch.tensor([5.0, -1.0, 4.0]))
        assert calls == [1]
    assert x.grad.tolist() == [0.0, 0.0, 4.0]
    assert len(relu._forward_hooks) == 0
    with hooks.guided_relu(lambda v: v) as calls:
        assert calls == [0]


def test_forward_errors_name_the_input_shapes() -> None:
    model = nn.Linear(3, 2)
    with pytest.raises(RuntimeError) as info:
        hooks.run_to_layer(model, None, (torch.ones(2, 5),), None)
    assert info.value.__notes__ == ["(the model's forward pass failed on inputs of shape (2, 5))"]
    with pytest.raises(RuntimeError) as info:
        hooks.run_to_layer(lambda a, b: model(a), None, (torch.ones(1, 4), "s"))
    assert info.value.__notes__[-1].endswith("of shape (1, 4), str)")


def test_the_model_gets_copies_of_the_inputs() -> None:
    def forward(a: Tensor, label: str, extra: Tensor) -> Tensor:
        assert label == "s" and extra is marker
        return a.mul_(3)

    x, marker = torch.ones(2, 3), torch.zeros(1)
    out = hooks.run_to_layer(forward, None, (x, "s"), (marker,))
    assert torch.equal(x, torch.ones(2, 3)) and x._version == 0
    assert torch.equal(out, torch.full((2, 3), 3.0))
    wide = torch.ones(1, 2, 3, 3).contiguous(memory_format=torch.channels_last)
    seen = hooks.run_to_layer(lambda a: a, None, (wide,))
    assert seen is not wide and seen.stride() == wide.stride()


# --- outputs.py ---------------------------------------------------------------------------


def test_outputs_messages_and_forms() -> None:
    with _raises(
        TypeError,
        "the model returns a list of 1, not one tensor; to explain the model output "
        "(layer=None), wrap the model so that it returns the tensor to explain, e.g. "
        "dnnbrain_captum.SelectOutput(model, 0) or SelectOutput(model, 'logits'), or give a "
        "layer",
    ):
        check_model_output([torch.ones(1)])
    with pytest.raises(TypeError, match="^the model returns a NoneType, not one tensor"):
        check_model_output(None)
    Out = namedtuple("Out", ["logits", "aux"])
    wrapped = SelectOutput(nn.Identity(), "aux")
    assert wrapped(Out(torch.ones(1), torch.zeros(1))).tolist() == [0.0]
    assert SelectOutput(nn.Identity(), 1)([torch.ones(1), torch.zeros(2)]).tolist() == [0.0, 0.0]
    with _raises(
        TypeError,
        "SelectOutput: select picked a list of 2 from a dict with keys ['a']; it must pick one "
        "tensor",
    ):
        SelectOutput(nn.Identity(), "a")({"a": [1, 2]})
    for bad in (True, None, 2.0):
        with _raises(TypeError, f"select must be an int, a str or a callable, got {bad!r}"):
            SelectOutput(nn.Identity(), bad)


def test_check_output_target_forms() -> None:
    logits = torch.zeros(2, 3)
    for fine in (0, 2, [0, 2], torch.tensor([1, 2]), None, 1.5, (2,), [(1,), (0,)]):
        check_output_target(logits, fine)
    check_output_target(torch.zeros(2), 7)  # a 1-D output has no classes to check
    with _raises(
        ValueError,
        "target class 3 is out of range: the model output has 3 classes, valid targets are 0..2 "
        "(0-based)",
    ):
        check_output_target(logits, 3)
    with _raises(
        ValueError,
        "target (3,) lies outside the model output of shape (2, 3) (0-based indices after the "
        "batch dimension)",
    ):
        check_output_target(logits, (3,))
    with _raises(
        ValueError,
        "target [0, 1] has 2 indices but the model output (2, 3) has 1 non-batch dimensions",
    ):
        check_output_target(logits, [[0, 1], [0, 1]])
    spatial = torch.zeros(1, 2, 4, 4)
    check_output_target(spatial, (1, 3, 3))
    check_output_target(spatial, 1)
    with pytest.raises(ValueError, match=r"^target 2 lies outside the model output of shape"):
        check_output_target(spatial, 2)
    with pytest.raises(ValueError, match=r"^target \(1, 4, 0\) lies outside"):
        check_output_target(spatial, (1, 4, 0))
    with pytest.raises(ValueError, match=r"^target \(1, 0, -1\) lies outside"):
        check_output_target(spatial, (1, 0, -1))


def test_index_errors_name_what_was_indexed() -> None:
    out = torch.zeros(2, 3, 2, 2)
    s = targets.select_layer_target
    with _raises(TypeError, "a unit index must be an integer index, got 1.5"):
        s(out, (0, 1.5, 0))
    with _raises(TypeError, "a unit index must be an integer index, got 'a'"):
        s(out, [(0, 0, 0), (0, "a", 0)])
    with _raises(TypeError, "target must be an integer index, got 1.5"):
        s(out, 1.5)
    with _raises(TypeError, "target must be an integer index, got 'b'"):
        s(out, [0, "b"])


def test_select_output_passes_keyword_arguments() -> None:
    class Keyword(nn.Module):
        def forward(self, x: Tensor, *, scale: float = 1.0) -> tuple[Tensor, Tensor]:
            return x * scale, x

    assert SelectOutput(Keyword(), 0)(torch.ones(1), scale=3.0).tolist() == [3.0]


def test_more_exact_messages() -> None:
    out = torch.zeros(2, 3, 2)
    with _raises(TypeError, "target must be an integer index, got 1.5"):
        targets.channel_maps(out, 1.5)
    with _raises(TypeError, "target must be an integer index, got 'a'"):
        targets.channel_maps(out, [0, "a"])
    x = torch.zeros(1, 1, 2, 2)
    with _raises(ValueError, "baselines must be a finite number, got nan"):
        baseline_images(x, float("nan"), {})
    with _raises(
        ValueError, "baselines must hold finite numbers only: 1 of 1 entries; inf at index (0,)"
    ):
        baseline_images(x, torch.tensor([float("inf")]), {})
    with pytest.raises(TypeError, match="^the model returns a float, not one tensor"):
        check_model_output(1.0)


def test_fast_path_keeps_dilation_and_names_target() -> None:
    conv = nn.Conv2d(2, 3, 3, dilation=2)
    model = _Hooked(conv).eval()
    x = torch.rand(2, 2, 7, 7)
    assert targets._fast_channel_layer(conv, 1, False)
    with torch.no_grad():
        got = targets.evaluate_target(model, conv, (x,), 1, "sum")
        torch.testing.assert_close(got, conv(x)[:, 1].sum((1, 2)))
    with _raises(TypeError, "target must be an integer index, got 1.5"):
        targets.evaluate_target(model, conv, (x,), 1.5)


def test_output_target_skips_only_what_it_cannot_read() -> None:
    check_output_target(torch.zeros(2, 1), True)  # a bool is not an index: left to Captum
    with pytest.raises(ValueError, match="^target class 7 is out of range"):
        check_output_target(torch.zeros(2, 3), [1.5, 7])


@pytest.mark.parametrize(
    "target,computed", [(1, 1), ([1, 1, 1], 1), ([2, 0, 2], 2), (3, 1)], ids=str
)
def test_fast_path_computes_only_the_target_channels(
    target: object, computed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = nn.Conv2d(2, 4, 3)
    model = nn.Sequential(conv, nn.ReLU()).eval()
    x = torch.rand(3, 2, 5, 5)
    with torch.no_grad():
        full = conv(x)
    rows = target if isinstance(target, list) else [target] * 3
    expected = full[torch.arange(3), rows].mean((1, 2))
    seen: list[int] = []
    conv2d = nn.functional.conv2d

    def spy(inp: Tensor, weight: Tensor, *args: object) -> Tensor:
        if inp.device.type != "meta":  # not the shape-only pass that establishes the layout
            seen.append(weight.shape[0])
        return conv2d(inp, weight, *args)

    monkeypatch.setattr(nn.functional, "conv2d", spy)
    with torch.no_grad():
        got = targets.evaluate_target(model, conv, (x,), target)
    torch.testing.assert_close(got, expected)
    assert seen == [computed]  # the layer itself never ran: only the target channels did


def test_image_batch_errors_name_the_argument() -> None:
    with _raises(TypeError, "images must be a floating-point tensor, got torch.int64"):
        check_image_batch(torch.zeros(1, 1, 2, 2, dtype=torch.long), "images")
