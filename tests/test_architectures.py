"""Transformers and modern CNNs in every algorithm: layer outputs read on their grid.

Small torchvision configurations (random weights, 32 x 32 inputs): ViT (tokens with a class
token), Swin (channels-last stages), MaxViT (channels-first stages, attention partitions
inside) and ConvNeXt (channels-last Linear layers between permutes). Every oracle reshapes the
raw layer output by hand, captured with a forward hook.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.maxvit import MaxVit
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

from dnnbrain_captum import (
    OccluderDiscrepancyMapping,
    UpsamplingActivationMapping,
    VanillaSaliencyImage,
)
from dnnbrain_captum._utils.layouts import resolve_layout


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32).eval()


def tiny_swin() -> nn.Module:
    torch.manual_seed(0)
    return SwinTransformer([4, 4], 16, [2, 2], [2, 2], [4, 4], num_classes=10).eval()


def tiny_maxvit() -> nn.Module:
    torch.manual_seed(0)
    return MaxVit((32, 32), 8, 2, [8, 16], [1, 1], 4, 0.0, num_classes=10).eval()


def tiny_convnext() -> nn.Module:
    torch.manual_seed(0)
    settings = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)]
    return ConvNeXt(settings, num_classes=10).eval()


def vit_grid(raw: Tensor) -> Tensor:
    """(N, 1 + 16, D) tokens -> (N, D, 4, 4): drop the class token, patches row by row."""
    n, _, d = raw.shape
    return raw[:, 1:, :].reshape(n, 4, 4, d).permute(0, 3, 1, 2)


def nhwc(raw: Tensor) -> Tensor:
    return raw.permute(0, 3, 1, 2)


def same(raw: Tensor) -> Tensor:
    return raw


CASES = [
    (tiny_vit, "encoder.layers.encoder_layer_1", vit_grid),
    (tiny_swin, "features.1", nhwc),
    (tiny_swin, "features.3.0.mlp", nhwc),
    (tiny_maxvit, "blocks.0.layers.0.layers.grid_attention", same),
    (tiny_convnext, "features.1.0.block.3", nhwc),
    (tiny_convnext, "features.1.0", same),
]
IDS = ["vit-block", "swin-stage", "swin-mlp", "maxvit-grid", "convnext-linear", "convnext-block"]


def raw_output(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    """The layer's raw output from a full forward pass (the oracles' own hook)."""
    seen: list[Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda m, a, out: seen.append(out) if not seen else None
    )
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0]


def images(n: int = 2) -> Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("factory", "layer", "to_grid"), CASES, ids=IDS)
def test_upsampled_map_is_the_grid_channel_interpolated(
    factory: Callable[[], nn.Module], layer: str, to_grid: Callable[[Tensor], Tensor]
) -> None:
    model, x, channel = factory(), images(), 5
    with torch.no_grad():
        grid = to_grid(raw_output(model, layer, x))[:, channel]
        expected = F.interpolate(grid[:, None], size=(32, 32), mode="bicubic", align_corners=False)
    maps = UpsamplingActivationMapping(model, layer).attribute(x, target=channel)
    torch.testing.assert_close(maps, expected[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("factory", "layer", "to_grid"), CASES, ids=IDS)
def test_occlusion_of_a_grid_channel_equals_brute_force(
    factory: Callable[[], nn.Module], layer: str, to_grid: Callable[[Tensor], Tensor]
) -> None:
    model, x, channel = factory(), images(1), 3
    window, stride = (12, 16), (10, 8)
    with torch.no_grad():
        clean = to_grid(raw_output(model, layer, x))[:, channel].mean()
        expected = torch.zeros(3, 3)
        for r in range(3):
            for c in range(3):
                occluded = x.clone()
                occluded[..., r * 10 : r * 10 + 12, c * 8 : c * 8 + 16] = 0.0
                value = to_grid(raw_output(model, layer, occluded))[:, channel].mean()
                expected[r, c] = clean - value
    result = OccluderDiscrepancyMapping(model, layer).attribute(
        x, target=channel, sliding_window_shapes=window, strides=stride
    )
    torch.testing.assert_close(result[0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("factory", "layer", "to_grid"), CASES, ids=IDS)
def test_saliency_of_a_grid_channel_and_unit_equals_autograd(
    factory: Callable[[], nn.Module], layer: str, to_grid: Callable[[Tensor], Tensor]
) -> None:
    model, x = factory(), images()
    leaf = x.clone().requires_grad_(True)
    grid = to_grid(raw_output(model, layer, leaf))
    channel_value = grid[:, 4].mean((1, 2)).sum()
    (channel_grad,) = torch.autograd.grad(channel_value, leaf, retain_graph=True)
    (unit_grad,) = torch.autograd.grad(grid[:, 2, 1, 3].sum(), leaf)
    saliency = VanillaSaliencyImage(model, layer)
    torch.testing.assert_close(saliency.attribute(x, target=4), channel_grad)
    torch.testing.assert_close(saliency.attribute(x, target=(2, 1, 3)), unit_grad)


def test_vit_target_five_is_feature_five_not_token_five() -> None:
    # Issue 11: the (N, 17, 16) output used to be read as 17 "channels": target=5 was token 5
    # and the upsampled "map" of a (N, 16) row came out as horizontal stripes.
    model, x = tiny_vit(), images()
    maps = UpsamplingActivationMapping(model, "encoder.layers.encoder_layer_1").attribute(
        x, target=5, interpolate_mode="nearest"
    )
    with torch.no_grad():
        tokens = raw_output(model, "encoder.layers.encoder_layer_1", x)
    expected = tokens[:, 1:, 5].reshape(2, 4, 4).repeat_interleave(8, 1).repeat_interleave(8, 2)
    torch.testing.assert_close(maps, expected)
    assert bool((maps.std(1) > 0).any()) and bool((maps.std(2) > 0).any())  # not stripes


def test_layouts_are_established_not_guessed() -> None:
    x = images(1)
    cases = [
        (tiny_vit(), "encoder.layers.encoder_layer_0", "tokens"),
        (tiny_vit(), "conv_proj", "channels_first"),
        (tiny_vit(), "heads", "static"),  # (N, K): channels
        (tiny_swin(), "features.0", "channels_last"),
        (tiny_swin(), "permute", "channels_first"),
        (tiny_convnext(), "features.1.0.block.2", "channels_last"),
        (tiny_convnext(), "features.1.0.block.0", "channels_first"),
        (tiny_maxvit(), "blocks.1", "channels_first"),
        (tiny_maxvit(), "blocks.0.layers.0.layers.window_attention.attn_layer", "refused"),
    ]
    for model, layer, kind in cases:
        layout = resolve_layout(model, model.get_submodule(layer), (x,))
        assert layout.kind == kind, (type(model).__name__, layer, layout)
    vit = tiny_vit()
    layout = resolve_layout(vit, vit.get_submodule("encoder.ln"), (x,))
    assert (layout.grid, layout.extra_tokens, layout.token_axis) == ((4, 4), 1, 1)


def test_unknown_layouts_are_refused_naming_the_shape_and_the_way_out() -> None:
    class Tokens(nn.Module):  # a sequence model: (N, 6, 8) tokens without any image grid
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.block = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)

        def forward(self, x: Tensor) -> Tensor:
            return self.block(self.embed(x.flatten(2).transpose(1, 2)[:, :6, :4]))

    model, x = Tokens().eval(), torch.rand(2, 4, 3, 3)
    with pytest.raises(
        ValueError,
        match=r"'block' \(TransformerEncoderLayer\) has shape "
        r"\(2, 6, 8\).*reshape_transform",
    ):
        UpsamplingActivationMapping(model, "block").attribute(x, target=1)
    with pytest.raises(ValueError, match=r"'block'.*\(2, 6, 8\)"):
        VanillaSaliencyImage(model, "block").attribute(x, target=1)
    # the way out: say how to read it (here: features as channels, tokens in a 2 x 3 grid)
    grid = VanillaSaliencyImage(
        model, "block", reshape_transform=lambda out: out.transpose(1, 2).reshape(2, 8, 2, 3)
    )
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(leaf)[:, 4, 1].sum(), leaf)
    torch.testing.assert_close(grid.attribute(x, target=(1, 1, 1)), expected)
    with pytest.raises(TypeError, match="reshape_transform must be a callable"):
        VanillaSaliencyImage(model, "block", reshape_transform="nhwc")  # type: ignore[arg-type]
    bad = UpsamplingActivationMapping(model, "block", reshape_transform=lambda out: out[0])
    with pytest.raises(ValueError, match=r"reshape_transform must map.*N = 2, got \(6, 8\)"):
        bad.attribute(x, target=1)


def test_gradient_at_a_token_layer_comes_on_its_grid() -> None:
    model, x = tiny_vit(), images()
    leaf = x.clone().requires_grad_(True)
    captured: list[Tensor] = []
    block = model.get_submodule("encoder.layers.encoder_layer_0")

    def keep(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        captured.append(out)
        return out

    handle = block.register_forward_hook(keep)
    try:
        grid = vit_grid(raw_output(model, "encoder.layers.encoder_layer_1", leaf))
    finally:
        handle.remove()
    (expected,) = torch.autograd.grad(grid[:, 2].mean((1, 2)).sum(), captured[0])
    grads = VanillaSaliencyImage(model, "encoder.layers.encoder_layer_1").attribute(
        x, target=2, to_layer="encoder.layers.encoder_layer_0"
    )
    assert grads.shape == (2, 16, 4, 4)  # (N, D, H, W): the class token's gradient left out
    torch.testing.assert_close(grads, vit_grid(expected))


def test_guided_saliency_on_a_channels_last_layer_of_a_relu_network() -> None:
    from captum.attr import NeuronGuidedBackprop
    from torchvision.ops import Permute

    from dnnbrain_captum import GuidedSaliencyImage

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Permute([0, 2, 3, 1]), nn.Linear(4, 6))
    model.eval()
    x = images()
    # the guided hooks on the ReLU must not hide the (N, H, W, C) layout of the Linear
    ours = GuidedSaliencyImage(model, "3").attribute(x, target=2)
    theirs = NeuronGuidedBackprop(model, model[3]).attribute(
        x, neuron_selector=lambda out: out[..., 2].mean((1, 2))
    )
    torch.testing.assert_close(ours, theirs)


def any_grid(raw: Tensor) -> Tensor:
    """ViT tokens (N, 1 + s*s, D) -> (N, D, s, s), for any square patch grid."""
    side = int(round((raw.shape[1] - 1) ** 0.5))
    return raw[:, 1:].reshape(raw.shape[0], side, side, -1).permute(0, 3, 1, 2)


FULL_SIZE = [
    # torchvision's builders at full width and depth, random weights, the smallest input each
    # architecture allows (MaxViT's 7 x 7 partitions need 224).
    ("vit_b_16", {"image_size": 48}, 48, "encoder.layers.encoder_layer_11", any_grid),
    ("swin_t", {}, 32, "features.1", nhwc),
    ("maxvit_t", {}, 224, "blocks.0.layers.1", same),
    ("convnext_tiny", {}, 32, "features.1.0.block.3", nhwc),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "layer", "to_grid"), FULL_SIZE, ids=[c[0] for c in FULL_SIZE]
)
def test_full_size_models_upsampling_occlusion_and_saliency_against_oracles(
    name: str, kwargs: dict, size: int, layer: str, to_grid: Callable[[Tensor], Tensor]
) -> None:
    import torchvision.models as tm

    torch.manual_seed(0)
    model = tm.get_model(name, weights=None, **kwargs).eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    half = size // 2
    with torch.no_grad():
        grid = to_grid(raw_output(model, layer, x))
        upsampled = F.interpolate(grid[:, 5:6], size=(size, size), mode="bicubic")[:, 0]
        occluded = torch.zeros(2, 2)
        for r in range(2):
            for c in range(2):
                covered = x.clone()
                covered[..., r * half : (r + 1) * half, c * half : (c + 1) * half] = 0.0
                value = to_grid(raw_output(model, layer, covered))[:, 5].mean()
                occluded[r, c] = grid[:, 5].mean() - value
    maps = UpsamplingActivationMapping(model, layer).attribute(x, target=5)
    torch.testing.assert_close(maps, upsampled, rtol=1e-4, atol=1e-5)
    result = OccluderDiscrepancyMapping(model, layer).attribute(
        x, target=5, sliding_window_shapes=(half, half), strides=(half, half)
    )
    torch.testing.assert_close(result[0], occluded, rtol=1e-4, atol=1e-5)
    leaf = x.clone().requires_grad_(True)
    grid = to_grid(raw_output(model, layer, leaf))
    (channel,) = torch.autograd.grad(grid[:, 5].mean(), leaf, retain_graph=True)
    (unit,) = torch.autograd.grad(grid[:, 5, 1, 0].sum(), leaf)
    saliency = VanillaSaliencyImage(model, layer)
    torch.testing.assert_close(saliency.attribute(x, target=5), channel, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(saliency.attribute(x, target=(5, 1, 0)), unit, rtol=1e-4, atol=1e-7)
