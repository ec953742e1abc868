"""Gradients of a layer's channel or unit: vanilla and guided saliency images.

DNNBrain's ``VanillaSaliencyImage`` and ``GuidedSaliencyImage`` as Captum gradient
attributions. SmoothGrad is ``captum.attr.NoiseTunnel`` around either class, with the noise
level from :func:`smoothgrad_stdev`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr import GradientAttribution, NeuronAttribution
from captum.log import log_usage
from torch import Tensor, nn

from dnnbrain_captum._compat import TargetType, format_output, is_tuple
from dnnbrain_captum._utils.aliases import captum_keyword_aliases
from dnnbrain_captum._utils.caller import warn_at_caller
from dnnbrain_captum._utils.hooks import LayerCapture, guided_relu, warn_if_training
from dnnbrain_captum._utils.layers import LayerSpec, resolve_layer
from dnnbrain_captum._utils.layouts import (
    ReshapeTransform,
    check_reshape_transform,
    grid_view,
    resolve_layout,
)
from dnnbrain_captum._utils.targets import check_reduction, evaluate_target
from dnnbrain_captum._utils.validation import check_inputs, finite

__all__ = ["GuidedSaliencyImage", "VanillaSaliencyImage", "smoothgrad_stdev"]


def smoothgrad_stdev(inputs: Tensor | tuple[Tensor, ...], sigma_multiplier: float = 0.1) -> float:
    """SmoothGrad's noise level: ``sigma_multiplier × (max − min)`` of the inputs.

    This is DNNBrain's σ (Smilkov et al. 2017 call the multiplier the noise level), computed
    on the model-ready inputs; pass it as ``stdevs`` to ``captum.attr.NoiseTunnel``. DNNBrain's
    own ``backprop_smooth`` overwrote the image with noise; here the noise is added to the image.

    Parameters
    ----------
    inputs : Tensor or tuple of Tensor
        Model-ready inputs (the range is taken over all of them).
    sigma_multiplier : float
        Noise level as a fraction of the input range, >= 0 (DNNBrain's default 0.1).

    Returns
    -------
    float
        The absolute standard deviation of the Gaussian noise.

    References
    ----------
    .. [1] Smilkov, D., Thorat, N., Kim, B., Viégas, F., Wattenberg, M. (2017). SmoothGrad:
       removing noise by adding noise. arXiv:1706.03825.

    Examples
    --------
    >>> smoothgrad_stdev(torch.tensor([[0.0, 2.0, 4.0]]), 0.1)
    0.4000000059604645
    """
    if isinstance(sigma_multiplier, bool) or not isinstance(sigma_multiplier, (int, float)):
        raise TypeError(f"sigma_multiplier must be a number, got {sigma_multiplier!r}")
    if finite(sigma_multiplier, "sigma_multiplier") < 0:
        raise ValueError(f"sigma_multiplier must be >= 0, got {sigma_multiplier}")
    items = check_inputs(inputs)
    high = max(float(t.max()) for t in items)
    low = min(float(t.min()) for t in items)
    return float(torch.tensor(sigma_multiplier * (high - low), dtype=torch.float32))


@captum_keyword_aliases
class VanillaSaliencyImage(NeuronAttribution, GradientAttribution):
    """Signed gradient of a layer's channel, unit or of a model output.

    The gradient of the explained scalar (a channel's spatial mean by default, DNNBrain's
    target) with respect to the inputs, or with respect to an internal layer (``to_layer``).
    The forward pass stops at the explained layer and no parameter gradient is computed.

    Parameters
    ----------
    forward_func : nn.Module or callable
        The model. A callable works with ``layer`` given as a module or None.
    layer : nn.Module, str or None
        The layer whose channel is explained: a module, a dotted path (``"features.6"``) or a
        DNNBrain alias (``"conv3"``). None explains the model output with Captum's target.
    reshape_transform : callable, optional
        Maps the layer's output to ``(N, C, H, W)`` (channels-first). By default the layout
        is established (``dnnbrain_captum._utils.layouts``): channels-first maps as they are,
        ViT tokens, Swin/ConvNeXt channels-last maps rearranged, anything else refused.

    Notes
    -----
    With ``layer=None`` and ``abs=False`` this equals ``captum.attr.Saliency``; with a layer and
    a channel it equals ``captum.attr.NeuronGradient`` with a channel-mean selector. If a
    module runs several times in one forward pass, its first call is explained.

    References
    ----------
    .. [1] Simonyan, K., Vedaldi, A., Zisserman, A. (2014). Deep inside convolutional networks:
       visualising image classification models and saliency maps. ICLR workshop.

    Examples
    --------
    >>> from dnnbrain_captum.models import digits_cnn, digits_images
    >>> model = digits_cnn()
    >>> images, _ = digits_images(n=2)
    >>> grads = VanillaSaliencyImage(model, "conv3").attribute(images, target=5)
    >>> tuple(grads.shape)
    (2, 3, 32, 32)
    """

    _guided = False

    def __init__(
        self,
        forward_func: nn.Module | Callable[..., Any],
        layer: LayerSpec = None,
        reshape_transform: ReshapeTransform | None = None,
    ) -> None:
        module = resolve_layer(forward_func, layer)
        self.reshape_transform = check_reshape_transform(reshape_transform)
        NeuronAttribution.__init__(self, forward_func, module)  # type: ignore[arg-type]
        GradientAttribution.__init__(self, forward_func)

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType | Callable[[Any], Tensor] = None,
        additional_forward_args: Any = None,
        abs: bool = False,
        reduction: str = "mean",
        to_layer: LayerSpec = None,
        attribute_to_layer_input: bool = False,
    ) -> Tensor | tuple[Tensor, ...]:
        """Gradient of the target with respect to the inputs (or ``to_layer``).

        Parameters
        ----------
        inputs : Tensor of shape (N, ...) or tuple of Tensor
            Model-ready inputs; a tuple gives a tuple of gradients.
        target : int, tuple, callable, list or Tensor
            With a layer: a channel (``int``), a unit ``(c, i, j)``, a callable
            ``f(layer_output) -> (N,)`` or one channel per example. Without a layer: Captum's
            target on the model output. 0-based.
        additional_forward_args : Any, optional
            Further positional arguments of the model.
        abs : bool
            Return absolute values (Captum's ``Saliency`` default is True; DNNBrain's and ours
            is False, signed).
        reduction : {"mean", "max", "sum"}
            How a channel becomes one scalar per example.
        to_layer : nn.Module, str or None
            Return the gradient at this internal layer's output instead of the inputs; for a
            layer whose output is channels-last or a token sequence (established as for
            ``layer``) the gradient comes on its grid, ``(N, C, H, W)``, without the extra
            (class) tokens.
        attribute_to_layer_input : bool
            With ``to_layer``: the gradient at the layer's *input* (DNNBrain's ``to_layer``
            semantics, e.g. ``to_layer="conv1_relu"`` gives the gradient at conv1's output).

        Returns
        -------
        Tensor or tuple of Tensor
            Same shape as ``inputs`` (or as ``to_layer``'s output/input), on the inputs'
            device and dtype.
        """
        check_reduction(reduction)
        is_inputs_tuple = is_tuple(inputs)
        items = check_inputs(inputs)
        tap_module = resolve_layer(self.forward_func, to_layer)
        if attribute_to_layer_input and tap_module is None:
            raise ValueError(
                "attribute_to_layer_input=True needs to_layer: the layer whose input gradient "
                "is returned"
            )
        warn_if_training(self.forward_func)
        with torch.enable_grad():
            leaves = tuple(t.detach().requires_grad_(True) for t in items)
            taps = []
            if tap_module is not None:
                taps.append(LayerCapture(tap_module, on_input=attribute_to_layer_input))
            if self._guided:
                if self.layer is not None:  # the layout, before the guided hooks are set
                    resolve_layout(
                        self.forward_func, self.layer, leaves, None, False, additional_forward_args
                    )
                with guided_relu(self.forward_func) as relu_calls:
                    values = self._target_values(
                        leaves, target, reduction, additional_forward_args, taps
                    )
                self._check_relu_calls(relu_calls[0])
            else:
                values = self._target_values(
                    leaves, target, reduction, additional_forward_args, taps
                )
            wrt = leaves if tap_module is None else (self._tapped(taps[0]),)
            grads = torch.autograd.grad(values.sum(), wrt, allow_unused=True)
        grads = tuple(
            torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt, strict=True)
        )
        if abs:
            grads = tuple(g.abs() for g in grads)
        if tap_module is not None:  # a channels-last or token layer: on its grid
            return grid_view(
                self.forward_func, tap_module, items, grads[0], attribute_to_layer_input
            )
        return format_output(is_inputs_tuple, grads)

    def _target_values(
        self,
        leaves: tuple[Tensor, ...],
        target: Any,
        reduction: str,
        additional_forward_args: Any,
        taps: list[LayerCapture],
    ) -> Tensor:
        return evaluate_target(
            self.forward_func,
            self.layer,
            leaves,
            target,
            reduction,
            additional_forward_args,
            reshape_transform=self.reshape_transform,
            taps=taps,
        )

    @staticmethod
    def _tapped(tap: LayerCapture) -> Tensor:
        if not isinstance(tap.value, Tensor):
            raise ValueError(
                f"to_layer {type(tap.module).__name__} did not run before the explained layer "
                "(or returns several tensors); pick a layer upstream of the target"
            )
        return tap.value

    def _check_relu_calls(self, calls: int) -> None:
        return None

    def has_convergence_delta(self) -> bool:
        """Saliency has no convergence delta."""
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        """Gradients are not multiplied by the inputs."""
        return False


class GuidedSaliencyImage(VanillaSaliencyImage):
    """Guided-backpropagation gradient of a layer's channel, unit or of a model output.

    Like :class:`VanillaSaliencyImage`, with the guided rule on every ``nn.ReLU`` module up to
    the explained layer: a gradient passes back through a ReLU only where the ReLU's input and
    the incoming gradient are both positive. Models that apply ReLU functionally
    (``F.relu``) get no guided rule there; a warning says so when no ``nn.ReLU`` ran.

    Parameters
    ----------
    forward_func : nn.Module
        The model (its ``nn.ReLU`` modules are hooked during each call).
    layer : nn.Module, str or None
        As for :class:`VanillaSaliencyImage`.

    Notes
    -----
    With ``layer=None`` this equals ``captum.attr.GuidedBackprop``; with a layer and a channel,
    ``captum.attr.NeuronGuidedBackprop`` with a channel-mean selector. In-place ReLUs are fine.

    References
    ----------
    .. [1] Springenberg, J. T., Dosovitskiy, A., Brox, T., Riedmiller, M. (2015). Striving for
       simplicity: the all convolutional net. ICLR workshop.

    Examples
    --------
    >>> from dnnbrain_captum.models import digits_cnn, digits_images
    >>> images, _ = digits_images(n=2)
    >>> grads = GuidedSaliencyImage(digits_cnn(), "conv5").attribute(images, target=[3, 7])
    >>> tuple(grads.shape)
    (2, 3, 32, 32)
    """

    _guided = True

    def _check_relu_calls(self, calls: int) -> None:
        if calls == 0:
            warn_at_caller(
                "no nn.ReLU module ran before the explained layer, so the guided rule was not "
                "applied (functional F.relu is not hooked); the result is the vanilla gradient",
            )
