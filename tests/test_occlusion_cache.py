"""The incremental analysis is traced once per model and question, and stays exact (issue 16).

A second ``attribute`` call reuses the kept ``torch.fx`` trace; weights and batch-norm
statistics changed in place need no new trace and the maps stay equal to the
one-window-one-forward oracle; a replaced submodule, a new hook or a training flag gives a new
analysis (or the full recompute); the cache does not keep a model alive.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, fx, nn

from dnnbrain_captum import OccluderDiscrepancyMapping
from tests.helpers.random_cnn import brute_force_occlusion

F64 = torch.float64
WINDOW, STRIDE = (3, 4), (2, 3)


def _model() -> nn.Sequential:
    torch.manual_seed(21)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    )
    return model.double().eval()


@pytest.fixture
def traces(monkeypatch: pytest.MonkeyPatch) -> list[nn.Module]:
    """Every model ``torch.fx.symbolic_trace`` is called on, in order."""
    seen: list[nn.Module] = []
    original: Callable[..., fx.GraphModule] = fx.symbolic_trace

    def counting(root: nn.Module, *args: object, **kwargs: object) -> fx.GraphModule:
        seen.append(root)
        return original(root, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fx, "symbolic_trace", counting)
    return seen


def _images() -> Tensor:
    return torch.rand(2, 3, 12, 11, generator=torch.Generator().manual_seed(22), dtype=F64)


def _check(model: nn.Module, layer: nn.Module | None, target: int, method: str) -> None:
    x = _images()
    fill = torch.zeros(1, 3, 12, 11, dtype=F64)
    expected = torch.stack(
        [
            brute_force_occlusion(model, layer, x[k : k + 1], target, WINDOW, STRIDE, fill)[0]
            for k in range(2)
        ]
    )
    got = OccluderDiscrepancyMapping(model, layer=layer).attribute(
        x, target=target, sliding_window_shapes=WINDOW, strides=STRIDE, method=method
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_second_call_reuses_the_trace(traces: list[nn.Module]) -> None:
    model = _model()
    _check(model, None, 1, "incremental")
    _check(model, None, 2, "incremental")
    assert len(traces) == 1
    _check(model, model[4], 3, "incremental")  # another question: one more trace
    _check(model, model[4], 0, "incremental")
    assert len(traces) == 2


def test_weights_changed_in_place_stay_exact_without_a_new_trace(traces: list[nn.Module]) -> None:
    model = _model()
    _check(model, None, 1, "incremental")
    with torch.no_grad():
        model[0].weight.mul_(-2.0)
        model[1].running_mean.add_(0.5)  # folded into the convolution: folded again
        model[1].running_var.mul_(3.0)
        model[4].bias.add_(1.0)
    _check(model, None, 1, "incremental")
    assert len(traces) == 1


def test_a_replaced_submodule_is_traced_again(traces: list[nn.Module]) -> None:
    model = _model()
    _check(model, None, 1, "incremental")
    model[2] = nn.Tanh().eval()
    _check(model, None, 1, "incremental")
    assert len(traces) == 2


def test_a_new_hook_is_seen(traces: list[nn.Module]) -> None:
    model = _model()
    _check(model, None, 1, "incremental")
    _check(model, model[4], 1, "incremental")
    handle = model[2].register_forward_hook(lambda m, i, o: o * 2.0)
    try:
        # class target: traced again, the cut moves before the hooked module (run in the head)
        _check(model, None, 1, "incremental")
        assert len(traces) == 3
        with pytest.raises(ValueError, match="not possible here: .*forward hooks"):
            _check(model, model[4], 1, "incremental")
        _check(model, model[4], 1, "auto")  # the full recompute runs the hook
    finally:
        handle.remove()
    _check(model, model[4], 1, "incremental")


def test_the_cache_does_not_keep_the_model_alive() -> None:
    model = _model()
    _check(model, None, 1, "incremental")
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
