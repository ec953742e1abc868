"""Vanilla and guided saliency: literal values, Captum equivalence, NoiseTunnel, to_layer."""

from __future__ import annotations

import pytest
import torch
from captum.attr import (
    GuidedBackprop,
    NeuronGradient,
    NeuronGuidedBackprop,
    NoiseTunnel,
    Saliency,
)
from torch import nn

from dnnbrain_captum import GuidedSaliencyImage, VanillaSaliencyImage, smoothgrad_stdev
from dnnbrain_captum.models import digits_cnn, digits_images
from tests.helpers.models import FunctionalReluConv, SumConv, TinyConvNet


def _guided_toy() -> nn.Sequential:
    """x (2) → identity Linear → ReLU → Linear with weights [1, −1]."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
    return model.eval()


def test_channel_mean_gradient_literal() -> None:
    x = torch.arange(9.0).view(1, 1, 3, 3)
    grads = VanillaSaliencyImage(SumConv(), "conv").attribute(x, target=0)
    expected = torch.tensor([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]])
    torch.testing.assert_close(grads[0, 0], expected)


def test_channel_max_and_sum_reductions_literal() -> None:
    x = torch.arange(9.0).view(1, 1, 3, 3)
    explainer = VanillaSaliencyImage(SumConv(), "conv")
    top = explainer.attribute(x, target=0, reduction="max")
    expected_max = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    torch.testing.assert_close(top[0, 0], expected_max)
    total = explainer.attribute(x, target=0, reduction="sum")
    torch.testing.assert_close(
        total[0, 0], 4 * torch.tensor([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]])
    )


def test_unit_target_literal() -> None:
    x = torch.arange(9.0).view(1, 1, 3, 3)
    grads = VanillaSaliencyImage(SumConv(), "conv").attribute(x, target=(0, 1, 0))
    expected = torch.zeros(3, 3)
    expected[1:3, 0:2] = 1.0
    torch.testing.assert_close(grads[0, 0], expected)


def test_guided_rule_literal() -> None:
    model = _guided_toy()
    x = torch.tensor([[1.0, 2.0]])
    torch.testing.assert_close(
        VanillaSaliencyImage(model).attribute(x), torch.tensor([[1.0, -1.0]])
    )
    torch.testing.assert_close(GuidedSaliencyImage(model).attribute(x), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(
        VanillaSaliencyImage(model).attribute(x, abs=True), torch.tensor([[1.0, 1.0]])
    )


@pytest.mark.parametrize("inplace", [False, True])
def test_equals_captum_saliency_and_guided_backprop(inplace: bool) -> None:
    model = TinyConvNet(inplace=inplace).eval()
    x = torch.rand(3, 3, 12, 12)
    ours = VanillaSaliencyImage(model).attribute(x, target=2)
    theirs = Saliency(model).attribute(x.clone().requires_grad_(), target=2, abs=False)
    torch.testing.assert_close(ours, theirs)
    ours = GuidedSaliencyImage(model).attribute(x, target=[0, 1, 4])
    theirs = GuidedBackprop(model).attribute(x.clone().requires_grad_(), target=[0, 1, 4])
    torch.testing.assert_close(ours, theirs)


def test_equals_captum_neuron_methods_on_digits() -> None:
    model = digits_cnn()
    x, _ = digits_images(n=4)
    layer = model.features[6]

    def selector(out: torch.Tensor) -> torch.Tensor:
        return out[:, 5].mean((1, 2))

    ours = VanillaSaliencyImage(model, "conv3").attribute(x, target=5)
    theirs = NeuronGradient(model, layer).attribute(x.clone().requires_grad_(), selector)
    torch.testing.assert_close(ours, theirs)
    ours = GuidedSaliencyImage(model, "features.6").attribute(x, target=5)
    theirs = NeuronGuidedBackprop(model, layer).attribute(x.clone().requires_grad_(), selector)
    torch.testing.assert_close(ours, theirs)
    assert ours.abs().sum() > 0


def test_noise_tunnel_zero_noise_equals_plain_call() -> None:
    model = digits_cnn()
    x, _ = digits_images(n=3)
    for cls in (VanillaSaliencyImage, GuidedSaliencyImage):
        plain = cls(model, "conv4").attribute(x, target=[1, 2, 3])
        tunnel = NoiseTunnel(cls(model, "conv4")).attribute(
            x, nt_type="smoothgrad", nt_samples=4, stdevs=0.0, target=[1, 2, 3]
        )
        torch.testing.assert_close(tunnel, plain)


def test_noise_tunnel_per_example_targets_match_neuron_gradient() -> None:
    model = digits_cnn()
    x, _ = digits_images(n=2)
    channels = torch.tensor([4, 9])
    samples = 3
    torch.manual_seed(7)
    ours = NoiseTunnel(VanillaSaliencyImage(model, "conv5")).attribute(
        x, nt_type="smoothgrad", nt_samples=samples, stdevs=0.05, target=channels.tolist()
    )
    expanded = channels.repeat_interleave(samples)

    def selector(out: torch.Tensor) -> torch.Tensor:
        return out[torch.arange(len(out)), expanded].mean((1, 2))

    torch.manual_seed(7)
    theirs = NoiseTunnel(NeuronGradient(model, model.features[10])).attribute(
        x, nt_type="smoothgrad", nt_samples=samples, stdevs=0.05, neuron_selector=selector
    )
    torch.testing.assert_close(ours, theirs)


def test_smoothgrad_stdev_is_fraction_of_range() -> None:
    x = torch.tensor([[-1.0, 0.5, 3.0]])
    assert smoothgrad_stdev(x, 0.25) == pytest.approx(1.0)
    assert smoothgrad_stdev((x, x * 2), 0.1) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="sigma_multiplier must be >= 0, got -0.1"):
        smoothgrad_stdev(x, -0.1)


def test_to_layer_output_and_input_gradients() -> None:
    model = digits_cnn()
    x, _ = digits_images(n=2)
    at_output = VanillaSaliencyImage(model, "conv3").attribute(x, target=1, to_layer="conv1")
    at_relu_input = VanillaSaliencyImage(model, "conv3").attribute(
        x, target=1, to_layer="conv1_relu", attribute_to_layer_input=True
    )
    assert at_output.shape == (2, 16, 32, 32)
    torch.testing.assert_close(at_output, at_relu_input)
    # DNNBrain's default: the input of conv1 is the image itself.
    at_image = VanillaSaliencyImage(model, "conv3").attribute(
        x, target=1, to_layer="conv1", attribute_to_layer_input=True
    )
    torch.testing.assert_close(
        at_image, VanillaSaliencyImage(model, "conv3").attribute(x, target=1)
    )


def test_to_layer_downstream_of_target_is_refused() -> None:
    model = digits_cnn()
    x, _ = digits_images(n=1)
    with pytest.raises(ValueError, match="did not run before the explained layer"):
        VanillaSaliencyImage(model, "conv2").attribute(x, target=1, to_layer="conv4")


def test_guided_warns_without_relu_modules() -> None:
    with pytest.warns(UserWarning, match="no nn.ReLU module ran"):
        GuidedSaliencyImage(FunctionalReluConv().eval()).attribute(torch.rand(1, 1, 5, 5), target=0)


def test_tuple_inputs_give_tuple_gradients() -> None:
    class Two(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a * b).sum(1, keepdim=True)

    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]])
    ga, gb = VanillaSaliencyImage(Two().eval()).attribute((a, b))
    torch.testing.assert_close(ga, b)
    torch.testing.assert_close(gb, a)


def test_training_mode_warns_once() -> None:
    model = TinyConvNet().train()
    x = torch.rand(1, 3, 12, 12)
    with pytest.warns(UserWarning, match="training mode"):
        VanillaSaliencyImage(model).attribute(x, target=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VanillaSaliencyImage(model).attribute(x, target=0)
    assert model.training
