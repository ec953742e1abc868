"""The constructor shared by the perturbation classes (occlusion, masked and minimal images)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from captum.attr import NeuronAttribution, PerturbationAttribution
from torch import nn

from dnnbrain_captum._utils.layers import LayerSpec, resolve_layer

__all__ = ["LayerPerturbation"]


class LayerPerturbation(NeuronAttribution, PerturbationAttribution):
    """A Captum perturbation attribution explaining a layer's channel, unit or the output.

    Parameters
    ----------
    forward_func : nn.Module or callable
        The model.
    layer : nn.Module, str or None
        A module of the model, a dotted path or a DNNBrain alias; None for the model output.
    """

    def __init__(
        self, forward_func: nn.Module | Callable[..., Any], layer: LayerSpec = None
    ) -> None:
        module = resolve_layer(forward_func, layer)
        NeuronAttribution.__init__(self, forward_func, module)  # type: ignore[arg-type]
        PerturbationAttribution.__init__(self, forward_func)
