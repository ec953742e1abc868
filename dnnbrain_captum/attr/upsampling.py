"""A channel's activation map, interpolated to the input size."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr import LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from dnnbrain_captum._utils.aliases import captum_keyword_aliases
from dnnbrain_captum._utils.hooks import warn_if_training
from dnnbrain_captum._utils.layers import LayerSpec, resolve_layer
from dnnbrain_captum._utils.layouts import ReshapeTransform, check_reshape_transform
from dnnbrain_captum._utils.targets import channel_maps, layer_output
from dnnbrain_captum._utils.validation import check_image_batch

__all__ = ["INTERPOLATE_MODES", "UpsamplingActivationMapping", "floor_below_quantile"]

INTERPOLATE_MODES = ("nearest", "bilinear", "bicubic", "area")


def floor_below_quantile(maps: Tensor, threshold: float, binarize: bool = False) -> Tensor:
    """Raise every value below the per-map ``threshold``-quantile to that quantile.

    This is DNNBrain's ``interp_threshold``: with 0.58 the map keeps its top 42 % and the rest
    is floored at the 58th percentile (linear interpolation between order statistics, as
    ``numpy.percentile``). With ``binarize=True`` the result is 1 where the map reaches the
    quantile and 0 elsewhere.

    Parameters
    ----------
    maps : Tensor of shape (N, H, W)
    threshold : float in [0, 1]
    binarize : bool

    Returns
    -------
    Tensor of shape (N, H, W)

    Examples
    --------
    >>> floor_below_quantile(torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]), 0.5)
    tensor([[[1.5000, 1.5000],
             [2.0000, 3.0000]]])
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number in [0, 1] or None, got {threshold!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    flat = maps.reshape(maps.shape[0], -1)
    floor = torch.quantile(flat, threshold, dim=1, keepdim=True)
    if binarize:
        return (flat >= floor).to(maps.dtype).view_as(maps)
    return torch.maximum(flat, floor).view_as(maps)


@captum_keyword_aliases
class UpsamplingActivationMapping(LayerAttribution):
    """The map of one channel of a layer, interpolated to the size of the input image.

    Parameters
    ----------
    forward_func : nn.Module or callable
        The model.
    layer : nn.Module or str
        The layer (module, dotted path or DNNBrain alias).
    reshape_transform : callable, optional
        Maps the layer's output to ``(N, C, H, W)`` (channels-first). By default the layout
        is established (``dnnbrain_captum._utils.layouts``): channels-first maps as they are,
        ViT tokens, Swin/ConvNeXt channels-last maps rearranged, anything else refused.

    Notes
    -----
    The forward pass stops at ``layer``. A ``Linear`` layer's "map" is one value, so its
    upsampled map is constant. Interpolation uses ``align_corners=False`` (PyTorch's and
    DNNBrain's current default); ``bicubic`` may overshoot the original range.

    References
    ----------
    .. [1] Zhou, B., Khosla, A., Lapedriza, A., Oliva, A., Torralba, A. (2015). Object
       detectors emerge in deep scene CNNs. ICLR.

    Examples
    --------
    >>> from dnnbrain_captum.models import digits_cnn, digits_images
    >>> images, _ = digits_images(n=2)
    >>> maps = UpsamplingActivationMapping(digits_cnn(), "conv5").attribute(images, target=3)
    >>> tuple(maps.shape)
    (2, 32, 32)
    """

    def __init__(
        self,
        forward_func: nn.Module | Callable[..., Any],
        layer: LayerSpec,
        reshape_transform: ReshapeTransform | None = None,
    ) -> None:
        module = resolve_layer(forward_func, layer)
        self.reshape_transform = check_reshape_transform(reshape_transform)
        if module is None:
            raise ValueError("UpsamplingActivationMapping needs a layer, got layer=None")
        LayerAttribution.__init__(self, forward_func, module)

    @log_usage()
    def attribute(
        self,
        inputs: Tensor,
        target: int | list[int] | Tensor,
        additional_forward_args: Any = None,
        interpolate_mode: str = "bicubic",
        threshold: float | None = None,
        binarize: bool = False,
        keepdim: bool = False,
    ) -> Tensor:
        """Upsampled activation map of channel ``target``.

        Parameters
        ----------
        inputs : Tensor of shape (N, C, H, W)
            Model-ready images.
        target : int, list of int or Tensor of shape (N,)
            The channel (0-based), or one channel per example.
        additional_forward_args : Any, optional
            Further positional arguments of the model.
        interpolate_mode : {"nearest", "bilinear", "bicubic", "area"}
            Interpolation (DNNBrain's ``interp_meth``; default bicubic).
        threshold : float in [0, 1], optional
            DNNBrain's ``interp_threshold``: values below this per-image quantile are raised to
            it (see :func:`floor_below_quantile`). None keeps the map as is.
        binarize : bool
            With ``threshold``: return 1 where the map reaches the quantile, 0 elsewhere.
        keepdim : bool
            Return (N, 1, H, W), the layout of Captum's layer attributions, so the maps go
            straight into ``LayerAttribution.interpolate`` and, as ``m[k].permute(1, 2, 0)``,
            into ``visualize_image_attr`` (see ``docs/captum.md``).

        Returns
        -------
        Tensor of shape (N, H, W), or (N, 1, H, W) with ``keepdim``
        """
        if interpolate_mode not in INTERPOLATE_MODES:
            raise ValueError(
                f"interpolate_mode must be one of {INTERPOLATE_MODES}, got {interpolate_mode!r}"
            )
        if binarize and threshold is None:
            raise ValueError("binarize=True needs a threshold in [0, 1]")
        x = check_image_batch(inputs)
        warn_if_training(self.forward_func)
        with torch.no_grad():
            output = layer_output(
                self.forward_func, self.layer, (x,), additional_forward_args, self.reshape_transform
            )
            if not isinstance(output, Tensor):
                raise ValueError("the layer returns several tensors; pick a layer with one output")
            maps = channel_maps(output, target)
            while maps.dim() < 3:
                maps = maps.unsqueeze(-1)
            if maps.dim() != 3:
                raise ValueError(
                    f"the layer output has shape {tuple(output.shape)}; expected (N, C, h, w) "
                    "or (N, K)"
                )
            kwargs = {"align_corners": False} if interpolate_mode in ("bilinear", "bicubic") else {}
            upsampled = nn.functional.interpolate(
                maps.unsqueeze(1), size=x.shape[-2:], mode=interpolate_mode, **kwargs
            ).squeeze(1)
            if threshold is not None:
                upsampled = floor_below_quantile(upsampled, threshold, binarize)
        upsampled = upsampled.to(x.dtype)
        return upsampled.unsqueeze(1) if keepdim else upsampled
