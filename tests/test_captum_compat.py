"""Captum's conventions on our classes: Captum's keyword names as aliases, and every
(N, H, W) map into ``LayerAttribution.interpolate`` and ``visualize_image_attr``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, NoiseTunnel
from captum.attr import visualization as captum_viz
from torch import Tensor

from dnnbrain_captum import (
    EmpiricalReceptiveField,
    GuidedSaliencyImage,
    MaskedImage,
    MinimalComponentImage,
    MinimalParcelImage,
    OccluderDiscrepancyMapping,
    UpsamplingActivationMapping,
    VanillaSaliencyImage,
)
from dnnbrain_captum._utils.aliases import CAPTUM_ALIASES
from dnnbrain_captum.models import digits_cnn, digits_images
from dnnbrain_captum.optim import SynthesisImage

MODEL = digits_cnn()
IMAGES, _ = digits_images(n=2)
CHANNEL = 51  # conv5 channel active on these digits (after its ReLU)
with torch.no_grad():
    CLASS = int(MODEL(IMAGES[:1]).argmax())

# class → a call taking ``**target_kwargs`` (``target=`` or ``neuron_selector=``)
CALLS: dict[str, Callable[..., Any]] = {
    "VanillaSaliencyImage": lambda **kw: VanillaSaliencyImage(MODEL, "conv5").attribute(
        IMAGES, **kw
    ),
    "GuidedSaliencyImage": lambda **kw: GuidedSaliencyImage(MODEL, "conv5").attribute(IMAGES, **kw),
    "UpsamplingActivationMapping": lambda **kw: UpsamplingActivationMapping(
        MODEL, "conv5"
    ).attribute(IMAGES, **kw),
    "OccluderDiscrepancyMapping": lambda **kw: OccluderDiscrepancyMapping(MODEL, "conv5").attribute(
        IMAGES, sliding_window_shapes=(16, 16), strides=(16, 16), **kw
    ),
    # the model output (the class logit stays positive on the hull image): the same keyword
    # with the predicted class as its value
    "MaskedImage": lambda **kw: MaskedImage(MODEL).attribute(
        IMAGES[:1], **dict.fromkeys(kw, CLASS)
    ),
    "MinimalParcelImage": lambda **kw: MinimalParcelImage(MODEL, "conv5").attribute(
        IMAGES[:1], segmentation="slic", segmentation_kwargs={"n_segments": 8}, **kw
    ),
    "MinimalComponentImage": lambda **kw: MinimalComponentImage(MODEL, "conv5").attribute(
        IMAGES[:1], patch_size=8, **kw
    ),
    "SynthesisImage": lambda **kw: SynthesisImage(MODEL, "conv5").attribute(
        torch.full((1, 3, 32, 32), 0.5), n_iter=2, **kw
    ),
    "EmpiricalReceptiveField": lambda **kw: EmpiricalReceptiveField(
        UpsamplingActivationMapping(MODEL, "conv5")
    ).attribute(IMAGES, **kw),
}


def _tensors(result: Any) -> list[Tensor]:
    if isinstance(result, Tensor):
        return [result]
    return [v for v in result if isinstance(v, Tensor)]


@pytest.mark.parametrize("name", sorted(CALLS))
def test_neuron_selector_is_target(name: str) -> None:
    torch.manual_seed(0)
    ours = CALLS[name](target=CHANNEL)
    torch.manual_seed(0)
    captums = CALLS[name](neuron_selector=CHANNEL)
    for a, b in zip(_tensors(ours), _tensors(captums), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_alias_and_name_together_is_a_type_error(name: str) -> None:
    with pytest.raises(TypeError, match="got both 'neuron_selector' .* and 'target'"):
        CALLS[name](target=CHANNEL, neuron_selector=CHANNEL)


def test_every_exported_attribution_class_has_the_aliases() -> None:
    import dnnbrain_captum

    for name in CALLS:
        method = getattr(dnnbrain_captum, name, None) or SynthesisImage
        assert method.attribute.captum_aliases["neuron_selector"] == "target", name
    assert CAPTUM_ALIASES == {
        "neuron_selector": "target",
        "attribute_to_neuron_input": "attribute_to_layer_input",
    }


def test_attribute_to_neuron_input_and_noise_tunnel() -> None:
    explainer = VanillaSaliencyImage(MODEL, "conv5")
    ours = explainer.attribute(
        IMAGES, target=CHANNEL, to_layer="conv1_relu", attribute_to_layer_input=True
    )
    captums = explainer.attribute(
        IMAGES, neuron_selector=CHANNEL, to_layer="conv1_relu", attribute_to_neuron_input=True
    )
    torch.testing.assert_close(ours, captums, rtol=0, atol=0)
    with pytest.raises(TypeError, match="attribute_to_neuron_input"):
        explainer.attribute(
            IMAGES, target=CHANNEL, attribute_to_layer_input=True, attribute_to_neuron_input=True
        )
    tunnel = NoiseTunnel(explainer)
    torch.manual_seed(1)
    a = tunnel.attribute(IMAGES, nt_samples=2, stdevs=0.1, neuron_selector=CHANNEL)
    torch.manual_seed(1)
    b = tunnel.attribute(IMAGES, nt_samples=2, stdevs=0.1, target=CHANNEL)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a class without attribute_to_layer_input does not invent the alias
    with pytest.raises(TypeError):
        UpsamplingActivationMapping(MODEL, "conv5").attribute(
            IMAGES, target=CHANNEL, attribute_to_neuron_input=True
        )


# ----------------------------------------------------------------------------- maps into Captum


def test_upsampled_maps_keepdim_go_into_layer_attribution_interpolate() -> None:
    upsampler = UpsamplingActivationMapping(MODEL, "conv5")
    flat = upsampler.attribute(IMAGES, target=CHANNEL)
    kept = upsampler.attribute(IMAGES, target=CHANNEL, keepdim=True)
    assert flat.shape == (2, 32, 32) and kept.shape == (2, 1, 32, 32)
    torch.testing.assert_close(kept[:, 0], flat, rtol=0, atol=0)
    larger = LayerAttribution.interpolate(kept, (64, 64), interpolate_mode="nearest")
    assert larger.shape == (2, 1, 64, 64)
    torch.testing.assert_close(larger[:, :, ::2, ::2], kept, rtol=0, atol=0)
    with pytest.raises((RuntimeError, ValueError)):  # why keepdim exists
        LayerAttribution.interpolate(flat, (64, 64), interpolate_mode="nearest")


def test_occlusion_grid_goes_into_interpolate_at_image_size() -> None:
    grid = OccluderDiscrepancyMapping(MODEL, "conv5").attribute(
        IMAGES, target=CHANNEL, sliding_window_shapes=(8, 8), strides=(8, 8)
    )  # (2, 4, 4): one value per 8 x 8 window
    per_pixel = LayerAttribution.interpolate(grid.unsqueeze(1), IMAGES.shape[-2:])
    assert per_pixel.shape == (2, 1, 32, 32)
    # nearest: each window's value fills the window's pixels
    torch.testing.assert_close(per_pixel[:, 0, 8 * 2 + 3, 8 * 1 + 5], grid[:, 2, 1])


@pytest.mark.parametrize("method", ["heat_map", "blended_heat_map"])
def test_maps_go_into_visualize_image_attr(method: str) -> None:
    kept = UpsamplingActivationMapping(MODEL, "conv5").attribute(
        IMAGES, target=CHANNEL, keepdim=True
    )
    saliency = VanillaSaliencyImage(MODEL, "conv5").attribute(IMAGES, target=CHANNEL)
    image = IMAGES[0].permute(1, 2, 0).numpy()
    for attribution in (kept[0], saliency[0]):  # (1, H, W) and (3, H, W)
        fig, ax = captum_viz.visualize_image_attr(
            attribution.permute(1, 2, 0).numpy(),
            image,
            method=method,
            sign="absolute_value",
            use_pyplot=False,
        )
        assert fig is not None and ax is not None
    assert np.isfinite(kept.numpy()).all()
