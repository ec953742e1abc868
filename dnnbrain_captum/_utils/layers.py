"""Resolve the ``layer`` argument: a module, a dotted path or a DNNBrain alias."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

from dnnbrain_captum.models.aliases import dnnbrain_aliases

__all__ = ["LayerSpec", "layer_path", "layer_names", "resolve_layer"]

LayerSpec = nn.Module | str | None


def layer_names(model: nn.Module) -> list[str]:
    """Every name ``model`` answers to: module paths, then DNNBrain aliases.

    Parameters
    ----------
    model : nn.Module
        The model.

    Returns
    -------
    list of str
        Dotted paths of all submodules (the root excluded) followed by the aliases.
    """
    paths = [name for name, _ in model.named_modules() if name]
    return paths + list(dnnbrain_aliases(model))


def layer_path(model: nn.Module, layer: nn.Module) -> str:
    """The dotted path of ``layer`` inside ``model`` (``""`` for the model itself).

    Raises
    ------
    ValueError
        If ``layer`` is not a submodule of ``model``.
    """
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError(
        f"layer {type(layer).__name__} is not a submodule of the model "
        f"{type(model).__name__}; pass one of its modules or a name such as "
        f"{_sample_names(model)}"
    )


def _sample_names(model: nn.Module, limit: int = 5) -> str:
    names = layer_names(model)[:limit]
    return ", ".join(repr(n) for n in names) if names else "(the model has no submodules)"


def resolve_layer(
    forward_func: nn.Module | Callable[..., Any], layer: LayerSpec
) -> nn.Module | None:
    """Turn the ``layer`` argument of a constructor into a module.

    Parameters
    ----------
    forward_func : nn.Module or callable
        The model (or a function; then ``layer`` must be a module or None).
    layer : nn.Module, str or None
        A module of the model (canonical), a dotted submodule path (``"features.10"``,
        ``"layer4.2"``), a DNNBrain alias (``"conv5"``, ``"conv5_relu"``, ``"fc3"``) or None
        for the model output.

    Returns
    -------
    nn.Module or None
        The resolved module, or None for the model output.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the closest names) or a module that is not
        part of the model.
    TypeError
        For anything that is not a module, a string or None.

    Examples
    --------
    >>> from torchvision.models import alexnet
    >>> net = alexnet()
    >>> resolve_layer(net, "conv5") is net.features[10]
    True
    >>> resolve_layer(net, "features.10") is net.features[10]
    True
    """
    if layer is None:
        return None
    if isinstance(layer, nn.Module):
        if isinstance(forward_func, nn.Module):
            layer_path(forward_func, layer)
        return layer
    if not isinstance(layer, str):
        raise TypeError(
            f"layer must be an nn.Module, a module path string or None, got {type(layer).__name__}"
        )
    if not isinstance(forward_func, nn.Module):
        raise TypeError(
            f"layer={layer!r} is a name, but the forward function is a "
            f"{type(forward_func).__name__}, not an nn.Module: pass the module object instead"
        )
    aliases = dnnbrain_aliases(forward_func)
    path = aliases.get(layer, layer)
    try:
        module = forward_func.get_submodule(path)
    except AttributeError:
        module = None
    if module is None or path == "":
        close = difflib.get_close_matches(layer, layer_names(forward_func), n=5, cutoff=0.5)
        hint = ", ".join(repr(c) for c in close) if close else _sample_names(forward_func)
        raise ValueError(
            f"unknown layer {layer!r} for {type(forward_func).__name__}; close names: {hint}"
        )
    return module
