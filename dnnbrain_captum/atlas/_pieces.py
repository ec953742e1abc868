"""The per-channel pieces of an atlas, each one :func:`dnnbrain_captum.run_over` over channels.

Every piece is a public attribution class run by the runner over a small data set built from the
stimulus set: the top stimuli of every selected channel (item ``j * K + r`` = the ``r``-th best
stimulus of the ``j``-th channel, with that channel as its target), or per channel the stack of
its K top stimuli, or random starting images for the syntheses. So every piece is batched across
channels, resumable and sharded by torchrun like any other run.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dnnbrain_captum.attr.minimal import MinimalParcelImage
from dnnbrain_captum.receptive_field.empirical import EmpiricalReceptiveField

__all__ = ["EmpiricalPerChannel", "MinimalImages", "Picked", "Stacked", "base_dataset"]


def base_dataset(stimuli: Any) -> Any:
    """The indexable data set behind ``stimuli`` (a tensor, a data set or a DataLoader)."""
    return stimuli.dataset if isinstance(stimuli, DataLoader) else stimuli


def _image(data: Any, index: int) -> Tensor:
    item = data[int(index)]
    image = item[0] if isinstance(item, (tuple, list)) else item
    return torch.as_tensor(image)


class Picked(Dataset):
    """Items ``data[indices[i]]`` (images only), e.g. the top stimuli of every channel."""

    def __init__(self, data: Any, indices: Sequence[int]) -> None:
        self.data = data
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Tensor:
        return _image(self.data, self.indices[i])


class Stacked(Dataset):
    """Item ``j`` = the images ``data[groups[j][r]]`` stacked: (K, C, H, W)."""

    def __init__(self, data: Any, groups: np.ndarray) -> None:
        self.data = data
        self.groups = np.asarray(groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, j: int) -> Tensor:
        return torch.stack([_image(self.data, i) for i in self.groups[j]])


class EmpiricalPerChannel:
    """``attribute(stacks, target=channels)``: each channel's empirical receptive field over its
    stack of images, as one row ``(h, w, map...)``: Tensor (B, 2 + R_h * R_w) (float64).

    Parameters
    ----------
    field : EmpiricalReceptiveField
        Built on the engine (upsampling or occlusion) and the layer.
    """

    def __init__(self, field: EmpiricalReceptiveField) -> None:
        self.field = field
        self.forward_func = field.model
        self.layer = field.layer

    def attribute(self, inputs: Tensor, target: Any = None, **kwargs: Any) -> Tensor:
        """Rows ``(h, w, map.flatten())`` for a batch of stacks (B, K, C, H, W)."""
        channels = target if isinstance(target, list) else [target] * inputs.shape[0]
        rows = []
        for stack, channel in zip(inputs, channels, strict=True):
            result = self.field.attribute(stack, target=int(channel), **kwargs)
            rows.append(
                torch.cat(
                    [
                        result.size.to(torch.float64).cpu(),
                        result.map.to(torch.float64).flatten().cpu(),
                    ]
                )
            )
        return torch.stack(rows)


class MinimalImages:
    """``attribute(x, target)`` = the minimal images of :class:`MinimalParcelImage` (N, C, H, W).

    Parameters
    ----------
    model : nn.Module
    layer : nn.Module
    reshape_transform : callable, optional
        The layer's ``reshape_transform`` (default: its established layout).
    """

    def __init__(self, model: nn.Module, layer: nn.Module, reshape_transform: Any = None) -> None:
        self.attribution_method = MinimalParcelImage(model, layer, reshape_transform)
        self.forward_func = model
        self.layer = layer

    def attribute(self, inputs: Tensor, target: Any = None, **kwargs: Any) -> Tensor:
        """The minimal images (the other fields of the result are not kept).

        A channel whose top activation is not positive has no smaller image keeping a fraction
        of it; the class warns and keeps everything. The atlas says so on the channel's page
        instead of warning once per channel.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*activation is not positive.*")
            return self.attribution_method.attribute(inputs, target=target, **kwargs).images
