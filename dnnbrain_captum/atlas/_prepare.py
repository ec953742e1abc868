"""Before any run of :func:`~dnnbrain_captum.atlas.build_atlas`: the stimuli and layers checked
and planned, and the request that identifies the atlas."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from dnnbrain_captum._utils.layouts import ReshapeTransform
from dnnbrain_captum.atlas._activations import ChannelActivations
from dnnbrain_captum.atlas._pieces import Picked, base_dataset
from dnnbrain_captum.atlas._plans import LayerPlan, plan_layers
from dnnbrain_captum.attr.upsampling import UpsamplingActivationMapping
from dnnbrain_captum.receptive_field.empirical import EmpiricalReceptiveField


def plan_stimuli(
    model: nn.Module,
    layers: Sequence[nn.Module | str] | nn.Module | str,
    stimuli: Tensor | Any,
    channels: str | Sequence[int] | Mapping[str, Any] | None,
    reduction: str,
    reshape_transform: ReshapeTransform | Mapping[str, ReshapeTransform] | None,
    top_k: int,
) -> tuple[Any, int, Tensor, list[LayerPlan], ChannelActivations]:
    """The stimulus data set, its size, a one-stimulus example batch (1, C, H, W), the layer
    plans and their activation recorder; refuses empty stimuli, ``top_k`` over their number and
    layers without a regular receptive field."""
    data = base_dataset(stimuli)
    n = len(data)
    if n == 0:
        raise ValueError("stimuli is empty")
    example = Picked(data, [0])[0][None]
    plans, activations = plan_layers(model, layers, example, channels, reduction, reshape_transform)
    if top_k > n:
        raise ValueError(f"top_k={top_k} exceeds the {n} stimuli")
    check_fields(model, plans, tuple(example.shape[1:]))
    return data, n, example, plans, activations


def atlas_request(
    model: nn.Module, n: int, plans: Sequence[LayerPlan], settings: dict[str, Any]
) -> dict[str, Any]:
    """The atlas's identity as JSON values (compared with a folder's on a rerun)."""
    layers_json = [{"name": p.name, "path": p.path, "channels": p.channels} for p in plans]
    request = {"model": type(model).__name__, "n_stimuli": n, "layers": layers_json, **settings}
    return json.loads(json.dumps(request, default=str))


def check_fields(model: nn.Module, plans: Sequence[LayerPlan], size: tuple[int, ...]) -> None:
    """Refuse, before any work, a layer without a regular receptive field (every page draws
    one, and the empirical field aligns on it)."""
    for plan in plans:
        engine = UpsamplingActivationMapping(model, plan.module, plan.transform)
        try:
            entry = EmpiricalReceptiveField(engine).theoretical(size)  # type: ignore[arg-type]
        except ValueError as error:
            reason = str(error)
        else:
            if all(getattr(entry, key, None) is not None for key in ("stride", "padding")):
                continue
            reason = f"layer {plan.name!r} has no regular receptive field (uneven fields)"
        raise ValueError(
            f"{reason}. The atlas draws every channel's receptive field: choose another "
            f"layer than {plan.name!r}"
        )
