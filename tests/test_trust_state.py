"""A model in training mode is left exactly as it was (DESIGN.md §9): forward passes update
copies of its buffers (``keeping_buffers``), and the results are those of the model as given."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from dnnbrain_captum import OccluderDiscrepancyMapping, VanillaSaliencyImage
from dnnbrain_captum._utils.hooks import keeping_buffers, run_to_layer


class _BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4, momentum=None)  # cumulative average: uses the counter
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


class _Counter(nn.Module):
    """Adds 1 to a buffer it shares with ``reader`` on every call; ``reader`` returns it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(()))
        self.reader = nn.Module()
        self.reader.register_buffer("count", self.count)  # the same tensor in two modules
        self.seen: list[float] = []

    def forward(self, x: Tensor) -> Tensor:
        self.count.add_(1)
        self.seen.append(float(self.reader.count))
        return x * self.reader.count


_TRAINING = pytest.mark.filterwarnings("ignore:.*is in training mode:UserWarning")


@_TRAINING
def test_saliency_in_training_mode_is_the_training_mode_gradient() -> None:
    model = _BNNet().train()
    reference = copy.deepcopy(model)
    x = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    grad = VanillaSaliencyImage(model).attribute(x, target=[0, 2, 1])
    leaf = x.clone().requires_grad_(True)
    logits = reference(leaf)  # batch statistics, as the attribution used
    (expected,) = torch.autograd.grad(logits[torch.arange(3), torch.tensor([0, 2, 1])].sum(), leaf)
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)
    assert int(model.bn.num_batches_tracked) == 0 and int(reference.bn.num_batches_tracked) == 1
    assert torch.equal(model.bn.running_mean, torch.zeros(4))


@_TRAINING
def test_occlusion_in_training_mode_keeps_statistics_and_version() -> None:
    model = _BNNet().train()
    version = model.bn.running_mean._version
    OccluderDiscrepancyMapping(model).attribute(
        torch.rand(2, 3, 6, 6), target=1, sliding_window_shapes=3, strides=3
    )
    assert model.bn.running_mean._version == version
    assert int(model.bn.num_batches_tracked) == 0


def test_shared_buffers_stay_shared_and_are_restored() -> None:
    model = _Counter().train()
    original = model.count
    run_to_layer(model, None, (torch.ones(1),))
    run_to_layer(model.forward, None, (torch.ones(1),))  # a bound method finds its module
    assert model.seen == [1.0, 1.0]  # the shared copy was seen through both modules
    assert model.count is original and model.reader.count is original
    assert float(original) == 0.0 and original._version == 0


def test_buffers_restored_after_an_exception_and_untouched_in_eval_mode() -> None:
    model = _Counter().train()

    def boom(module: nn.Module, args: object, output: object) -> None:
        raise KeyError("inside the forward")

    handle = model.register_forward_hook(boom)
    with pytest.raises(KeyError):
        run_to_layer(model, None, (torch.ones(1),))
    handle.remove()
    assert float(model.count) == 0.0 and model._buffers["count"] is model.reader.count
    model.eval()
    with keeping_buffers(model):  # eval mode: nothing copied, the forward sees the real buffer
        model(torch.ones(1))
    assert float(model.count) == 1.0


def test_a_submodule_in_training_mode_is_enough() -> None:
    model = _BNNet().eval()
    model.bn.train()
    run_to_layer(model, None, (torch.rand(2, 3, 5, 5),))
    assert int(model.bn.num_batches_tracked) == 0
    assert not model.training and model.bn.training


def test_buffer_requiring_grad_keeps_the_flag_in_its_copy() -> None:
    model = _Counter().train()
    model.count.requires_grad_(True)
    original = model.count
    with keeping_buffers(model):
        assert model.count is not original and model.count.requires_grad
        assert model.reader.count is model.count
    assert model.count is original and model.count.requires_grad
