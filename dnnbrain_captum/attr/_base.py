"""The constructor shared by the perturbation classes (occlusion, masked and minimal images)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from captum.attr import NeuronAttribution, PerturbationAttribution
from torch import nn

from dnnbrain_captum._utils.layers import LayerSpec, resolve_layer
from dnnbrain_captum._utils.layouts import ReshapeTransform, check_reshape_transform

__all__ = ["LayerPerturbation"]


class LayerPerturbation(NeuronAttribution, PerturbationAttribution):
    """A Captum perturbation attribution explaining a layer's channel, unit or the output.

    Parameters
    ----------
    forward_func : nn.Module or callable
        The model.
    layer : nn.Module, str or None
        A module of the model, a dotted path or a DNNBrain alias; None for the model output.
    reshape_transform : callable, optional
        Maps the layer's output to ``(N, C, H, W)`` (channels-first). By default the layout
        is established (``dnnbrain_captum._utils.layouts``): channels-first maps as they are,
        ViT tokens, Swin/ConvNeXt channels-last maps rearranged, anything else refused.
    """

    def __init__(
        self,
        forward_func: nn.Module | Callable[..., Any],
        layer: LayerSpec = None,
        reshape_transform: ReshapeTransform | None = None,
    ) -> None:
        module = resolve_layer(forward_func, layer)
        self.reshape_transform = check_reshape_transform(reshape_transform)
        NeuronAttribution.__init__(self, forward_func, module)  # type: ignore[arg-type]
        PerturbationAttribution.__init__(self, forward_func)
