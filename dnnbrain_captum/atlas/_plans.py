"""What the atlas covers: the layers (resolved, probed) and their selected channels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor, nn

from dnnbrain_captum._utils.layers import layer_path, resolve_layer
from dnnbrain_captum._utils.layouts import ReshapeTransform, check_reshape_transform
from dnnbrain_captum.atlas._activations import ChannelActivations

__all__ = ["LayerPlan", "parse_channels", "plan_layers"]


@dataclass
class LayerPlan:
    """One layer of the atlas: its name, module, output shape and selected channels."""

    name: str
    folder: str
    module: nn.Module
    path: str
    shape: tuple[int, ...]
    channels: list[int]
    offset: int = 0  # its first column in the activation pass's result
    transform: ReshapeTransform | None = None  # the user's reshape_transform for this layer
    top: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    bottom: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))


def parse_channels(spec: str | Sequence[int] | None, n_channels: int, layer: str) -> list[int]:
    """The selected 0-based channels of a layer.

    Parameters
    ----------
    spec : str, sequence of int or None
        None: every channel; ``"0-7,12"``: ranges and single channels; or a list of ints.
    n_channels : int
    layer : str
        For error messages.

    Examples
    --------
    >>> parse_channels("0-2,5", 8, "conv1")
    [0, 1, 2, 5]
    """
    if spec is None:
        return list(range(n_channels))
    values: list[int] = []
    if isinstance(spec, str):
        for part in spec.split(","):
            low, sep, high = part.strip().partition("-")
            try:
                values.extend(range(int(low), int(high) + 1) if sep else [int(low)])
            except ValueError:
                raise ValueError(f"channels {spec!r}: expected ranges such as 0-7,12") from None
    else:
        values = [int(v) for v in spec]
    if not values:
        raise ValueError(f"channels {spec!r} selects no channel of layer {layer!r}")
    bad = [v for v in values if not 0 <= v < n_channels]
    if bad:
        raise ValueError(
            f"channel {bad[0]} is out of range for layer {layer!r}: it has "
            f"{n_channels} channels, 0 to {n_channels - 1} (0-based)"
        )
    return sorted(set(values))


def _folder_name(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".")
    return keep or "layer"


def plan_layers(
    model: nn.Module,
    layers: Sequence[nn.Module | str],
    example: Tensor,
    channels: Any,
    reduction: str,
    reshape_transform: Any = None,
) -> tuple[list[LayerPlan], ChannelActivations]:
    """Resolve and probe the layers; select their channels (``reshape_transform``: one
    callable for every layer, or ``{layer name: callable}``)."""
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    modules = [resolve_layer(model, layer) for layer in layers]
    if not modules or any(m is None for m in modules):
        raise ValueError("layers must name at least one layer of the model (None is the output)")
    names = [
        layer if isinstance(layer, str) else layer_path(model, m)
        for layer, m in zip(layers, modules, strict=True)
    ]
    if len({id(m) for m in modules}) < len(modules):
        raise ValueError(f"layers {names} name the same layer twice")
    folders = [_folder_name(n) for n in names]
    if len(set(folders)) < len(folders) or "stimuli" in folders or "runs" in folders:
        raise ValueError(f"layers {names} give clashing folder names {folders}")
    if isinstance(reshape_transform, Mapping):
        unknown = sorted(set(reshape_transform) - set(names))
        if unknown:
            raise ValueError(f"reshape_transform names {unknown}, not among the layers {names}")
    transforms = [_transform_of(reshape_transform, name) for name in names]
    activations = ChannelActivations(model, modules, reduction, transforms)  # type: ignore[arg-type]
    shapes = activations.probe(example)
    plans, offset = [], 0
    for name, folder, module, shape, transform in zip(
        names, folders, modules, shapes, transforms, strict=True
    ):
        spec = channels.get(name) if isinstance(channels, Mapping) else channels
        plans.append(
            LayerPlan(
                name,
                folder,
                module,
                layer_path(model, module),  # type: ignore
                shape,
                parse_channels(spec, shape[0], name),
                offset,
                transform,
            )
        )
        offset += shape[0]
    return plans, activations


def _transform_of(reshape_transform: Any, name: str) -> ReshapeTransform | None:
    if isinstance(reshape_transform, Mapping):
        return check_reshape_transform(reshape_transform.get(name))
    return check_reshape_transform(reshape_transform)


def transform_names(reshape_transform: Any) -> Any:
    """What the atlas's settings record of ``reshape_transform``: the callables' names."""

    def name(f: Any) -> str | None:
        return None if f is None else getattr(f, "__qualname__", type(f).__name__)

    if isinstance(reshape_transform, Mapping):
        return {str(k): name(v) for k, v in sorted(reshape_transform.items())}
    return name(reshape_transform)
