"""Layer resolution, DNNBrain aliases, target selection, early exit and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import alexnet, resnet18, vgg11, vgg16, vgg19_bn

from dnnbrain_captum import (
    GuidedSaliencyImage,
    OccluderDiscrepancyMapping,
    UpsamplingActivationMapping,
    VanillaSaliencyImage,
)
from dnnbrain_captum._utils.hooks import run_to_layer
from dnnbrain_captum._utils.layers import resolve_layer
from dnnbrain_captum._utils.targets import evaluate_target, select_layer_target
from dnnbrain_captum.models import digits_cnn, dnnbrain_aliases
from tests.helpers.models import TinyConvNet


def test_alexnet_and_vgg_alias_tables_follow_dnnbrain() -> None:
    table = dnnbrain_aliases(alexnet())
    assert table["conv1"] == "features.0" and table["conv1_maxpool"] == "features.2"
    assert table["conv3"] == "features.6" and table["conv5_relu"] == "features.11"
    assert table["fc1"] == "classifier.1" and table["fc2_relu"] == "classifier.5"
    assert table["fc3"] == "classifier.6"
    vgg = dnnbrain_aliases(vgg11())
    assert vgg["conv4_maxpool"] == "features.10" and vgg["conv8"] == "features.18"
    assert vgg["fc1"] == "classifier.0" and vgg["fc3"] == "classifier.6"
    assert dnnbrain_aliases(vgg16())["conv13_relu"] == "features.29"
    bn = dnnbrain_aliases(vgg19_bn())
    assert (bn["conv1"], bn["conv1_bn"], bn["conv1_relu"]) == (
        "features.0",
        "features.1",
        "features.2",
    )
    assert bn["conv16_maxpool"] == "features.52"
    assert dnnbrain_aliases(resnet18()) == {}


def test_layer_given_three_ways_gives_the_same_result() -> None:
    model = alexnet().eval()
    x = torch.rand(1, 3, 64, 64)
    results = [
        VanillaSaliencyImage(model, layer).attribute(x, target=3)
        for layer in (model.features[6], "features.6", "conv3")
    ]
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    torch.testing.assert_close(results[0], results[2], rtol=0, atol=0)


@pytest.mark.parametrize(
    "factory,layer,alias",
    [
        (alexnet, "features.10", "conv5"),
        (vgg11, "features.11", "conv5"),
        (resnet18, "layer2.1", None),
        (digits_cnn, "features.8", "conv4"),
    ],
)
def test_every_class_runs_on_torchvision_models(factory, layer, alias) -> None:
    model = factory().eval()
    x = torch.rand(2, 3, 64, 64) if factory is not digits_cnn else torch.rand(2, 3, 32, 32)
    module = model.get_submodule(layer)
    names = [module, layer] + ([alias] if alias else [])
    grads = [VanillaSaliencyImage(model, name).attribute(x, target=[1, 2]) for name in names]
    for other in grads[1:]:
        torch.testing.assert_close(other, grads[0], rtol=0, atol=0)
    assert grads[0].shape == x.shape and grads[0].abs().sum() > 0
    guided = GuidedSaliencyImage(model, layer).attribute(x, target=1)
    assert guided.shape == x.shape
    maps = UpsamplingActivationMapping(model, layer).attribute(x, target=1)
    assert maps.shape == (2, *x.shape[-2:])
    grid = OccluderDiscrepancyMapping(model, layer).attribute(
        x, target=1, sliding_window_shapes=16, strides=16
    )
    assert grid.shape == (2, x.shape[-2] // 16, x.shape[-1] // 16)
    with torch.no_grad():
        whole = model(x)
    logits = OccluderDiscrepancyMapping(model).attribute(
        x, target=0, sliding_window_shapes=x.shape[-1], strides=1, baselines=0.0
    )
    with torch.no_grad():
        blank = model(torch.zeros_like(x))
    torch.testing.assert_close(logits.flatten(), whole[:, 0] - blank[:, 0], rtol=1e-4, atol=1e-4)


def test_early_exit_runs_nothing_after_the_layer() -> None:
    model = TinyConvNet().eval()
    ran = []
    handle = model.fc.register_forward_hook(lambda *a: ran.append(True))
    try:
        out = run_to_layer(model, model.conv2, (torch.rand(1, 3, 12, 12),))
        OccluderDiscrepancyMapping(model, "relu2").attribute(
            torch.rand(1, 3, 12, 12), target=0, sliding_window_shapes=4, strides=4
        )
    finally:
        handle.remove()
    assert out.shape == (1, 4, 6, 6)
    assert not ran


def test_only_the_target_channel_matches_the_full_layer() -> None:
    model = alexnet().eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        fast = evaluate_target(model, model.features[6], (x,), [1, 7, 1], "max")
        full = model.features[:7](x)
        slow = full[torch.arange(3), torch.tensor([1, 7, 1])].amax((1, 2))
        torch.testing.assert_close(fast, slow)
        logits = evaluate_target(model, model.classifier[6], (x,), 5)
        torch.testing.assert_close(logits, model(x)[:, 5])


def test_target_forms() -> None:
    out = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    torch.testing.assert_close(select_layer_target(out, 1), torch.tensor([5.5, 17.5]))
    torch.testing.assert_close(select_layer_target(out, [0, 2], "sum"), torch.tensor([6.0, 86.0]))
    torch.testing.assert_close(select_layer_target(out, (2, 0, 1)), torch.tensor([9.0, 21.0]))
    torch.testing.assert_close(
        select_layer_target(out, [(0, 0, 0), (1, 1, 1)]), torch.tensor([0.0, 19.0])
    )
    torch.testing.assert_close(
        select_layer_target(out, lambda o: o[:, 0, 0, 0]), torch.tensor([0.0, 12.0])
    )
    torch.testing.assert_close(
        select_layer_target(out, torch.tensor([2, 1]), "max"), torch.tensor([11.0, 19.0])
    )


# ----------------------------------------------------------------------------- bad input
def test_unknown_layer_lists_close_names() -> None:
    with pytest.raises(ValueError, match=r"unknown layer 'conv6'.*'conv5'"):
        VanillaSaliencyImage(alexnet(), "conv6")
    with pytest.raises(ValueError, match=r"unknown layer 'featurs.6'.*'features.6'"):
        OccluderDiscrepancyMapping(alexnet(), "featurs.6")
    with pytest.raises(ValueError, match="not a submodule"):
        UpsamplingActivationMapping(alexnet(), nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="layer must be an nn.Module"):
        VanillaSaliencyImage(alexnet(), 3)
    with pytest.raises(ValueError, match="needs a layer"):
        UpsamplingActivationMapping(alexnet(), None)
    assert resolve_layer(alexnet(), None) is None


def test_channel_out_of_range() -> None:
    model = digits_cnn()
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"target channel 48 is out of range.*0\.\.47"):
        VanillaSaliencyImage(model, "conv3").attribute(x, target=48)
    with pytest.raises(ValueError, match=r"target channel 64 is out of range"):
        OccluderDiscrepancyMapping(model, "conv5_relu").attribute(x, target=[0, 64])
    with pytest.raises(ValueError, match=r"target channel -1 is out of range"):
        UpsamplingActivationMapping(model, "conv5").attribute(x, target=-1)
    with pytest.raises(ValueError, match=r"target class 10 is out of range: the model output"):
        VanillaSaliencyImage(model).attribute(x, target=10)
    with pytest.raises(ValueError, match=r"target unit \(0, 9, 0\) lies outside"):
        VanillaSaliencyImage(model, "conv3").attribute(x, target=(0, 9, 0))
    with pytest.raises(ValueError, match="target has 3 entries but the batch has 2"):
        VanillaSaliencyImage(model, "conv3").attribute(x, target=[1, 2, 3])
    with pytest.raises(ValueError, match="maps a whole channel"):
        UpsamplingActivationMapping(model, "conv5").attribute(x, target=(1, 2, 2))


def test_window_and_stride_errors() -> None:
    odm = OccluderDiscrepancyMapping(digits_cnn(), "conv2")
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(
        ValueError,
        match=r"sliding_window_shapes=\(33, 5\) is larger than the "
        r"image \(32, 32\)",
    ):
        odm.attribute(x, target=0, sliding_window_shapes=(33, 5))
    with pytest.raises(ValueError, match=r"strides=0: every entry must be >= 1"):
        odm.attribute(x, target=0, strides=0)
    with pytest.raises(ValueError, match=r"strides=\(2, 0\)"):
        odm.attribute(x, target=0, strides=(2, 0))
    with pytest.raises(ValueError, match=r"must cover all 3 input channels \(C=3\)"):
        odm.attribute(x, target=0, sliding_window_shapes=(4, 3, 3))
    with pytest.raises(ValueError, match="perturbations_per_eval must be an int >= 1, got 0"):
        odm.attribute(x, target=0, perturbations_per_eval=0)
    with pytest.raises(ValueError, match="baselines must be a number, a tensor or 'noise'"):
        odm.attribute(x, target=0, baselines="black")
    with pytest.raises(ValueError, match=r"interpolate_mode must be one of"):
        UpsamplingActivationMapping(digits_cnn(), "conv2").attribute(
            x, target=0, interpolate_mode="linear"
        )
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\], got 1.5"):
        UpsamplingActivationMapping(digits_cnn(), "conv2").attribute(x, target=0, threshold=1.5)
    with pytest.raises(ValueError, match=r"reduction must be one of"):
        VanillaSaliencyImage(digits_cnn(), "conv2").attribute(x, target=0, reduction="median")


@pytest.mark.parametrize(
    "cls",
    [
        VanillaSaliencyImage,
        GuidedSaliencyImage,
        UpsamplingActivationMapping,
        OccluderDiscrepancyMapping,
    ],
)
def test_rank_nan_and_empty_batch(cls) -> None:
    explainer = cls(digits_cnn(), "conv2")
    if cls in (UpsamplingActivationMapping, OccluderDiscrepancyMapping):
        with pytest.raises(ValueError, match=r"must have shape \(N, C, H, W\), got 3-D"):
            explainer.attribute(torch.rand(3, 32, 32), target=0)
    nan = torch.rand(1, 3, 32, 32)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="inputs contains NaN or infinite values"):
        explainer.attribute(nan, target=0)
    with pytest.raises(ValueError, match=r"shape \(0, 3, 32, 32\): the batch is empty"):
        explainer.attribute(torch.rand(0, 3, 32, 32), target=0)
    with pytest.raises(TypeError, match="inputs must be a floating-point tensor"):
        explainer.attribute(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), target=0)
    with pytest.raises(TypeError, match="inputs must be a torch.Tensor"):
        explainer.attribute([[0.0]], target=0)


# ----------------------------------------------------------------------------- review fixes
class _Tokens(nn.Module):
    """A Linear layer applied to (N, T, D) tokens: its channels are on the last dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_linear_on_tokens_selects_dimension_one_like_the_slow_path() -> None:
    model = _Tokens().eval()
    x = torch.rand(2, 9, 4)
    with torch.no_grad():
        expected = model(x)[:, 2].mean(1)
        # (N, 9, 6) from a Linear is features-last: refused unless the user says how to read it
        with pytest.raises(ValueError, match=r"'fc' \(Linear\) has shape \(2, 9, 6\).*reshape"):
            evaluate_target(model, model.fc, (x,), 2)
        value = evaluate_target(model, model.fc, (x,), 2, reshape_transform=lambda out: out)
        torch.testing.assert_close(value, expected)


def test_forward_hooks_on_the_target_layer_are_respected() -> None:
    model = TinyConvNet().eval()
    x = torch.rand(2, 3, 12, 12)
    handle = model.conv2.register_forward_hook(lambda m, a, out: out * 10)
    try:
        with torch.no_grad():
            hooked = evaluate_target(model, model.conv2, (x,), 1)
            expected = model.conv2(model.pool(model.relu1(model.conv1(x))))[:, 1].mean((1, 2))
        torch.testing.assert_close(hooked, expected)
    finally:
        handle.remove()


def test_occlusion_on_a_model_that_views_before_the_target() -> None:
    class Viewing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)
            self.fc = nn.Linear(2 * 6 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.conv(x))
            return self.fc(h.view(h.size(0), -1))

    model = Viewing().eval()
    x = torch.rand(2, 3, 8, 8)
    at_layer = OccluderDiscrepancyMapping(model, model.fc).attribute(
        x, target=1, sliding_window_shapes=3, strides=2
    )
    at_output = OccluderDiscrepancyMapping(model).attribute(
        x, target=1, sliding_window_shapes=3, strides=2
    )
    torch.testing.assert_close(at_layer, at_output)


def test_early_exit_survives_a_model_that_catches_exceptions() -> None:
    class Catching(TinyConvNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            try:
                return super().forward(x)
            except Exception:  # a model's own error handling must not swallow the early exit
                return torch.zeros(x.shape[0], 5)

    model = Catching().eval()
    out = run_to_layer(model, model.conv2, (torch.rand(1, 3, 12, 12),))
    assert out.shape == (1, 4, 6, 6)


def test_missing_target_unbatched_input_and_orphan_flag() -> None:
    model = digits_cnn()
    x = torch.rand(2, 3, 32, 32)
    for layer in ("conv3", "conv3_relu"):
        with pytest.raises(ValueError, match="target is required when a layer is given"):
            VanillaSaliencyImage(model, layer).attribute(x)
    with pytest.raises(ValueError, match=r"inputs must be batched"):
        VanillaSaliencyImage(model, "conv3").attribute(torch.rand(3, 32, 32), target=1)
    with pytest.raises(ValueError, match="attribute_to_layer_input=True needs to_layer"):
        VanillaSaliencyImage(model, "conv3").attribute(x, target=1, attribute_to_layer_input=True)
