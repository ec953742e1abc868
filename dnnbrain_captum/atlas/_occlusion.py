"""The atlas's occlusion maps: every selected channel of a layer from one sweep per stimulus.

``OccluderDiscrepancyMapping`` maps one target per image. Many channels share top stimuli
(on the digits CNN's conv5 the 64 × 9 top stimuli are 96 different digits), and one occluded
image's forward pass gives every channel of the layer at once. So the atlas occludes each
distinct top stimulus once and reads every selected channel's map from that sweep: the same
definition as the class (``original − occluded`` channel value, one value per full window,
window ``(r, c)`` at top-left pixel ``(r·s_h, c·s_w)``, the occluder a constant), equal to its
``method="full"`` maps up to float rounding (tested). Settings the sweep does not cover (a
tensor or ``"noise"`` occluder, an explicit ``method``, ``keepdim``...) keep the class, one map
per channel and top stimulus.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dnnbrain_captum._utils.validation import check_image_batch, pair, positive_int
from dnnbrain_captum.atlas._activations import ChannelActivations, on_model_device
from dnnbrain_captum.attr._incremental.cost import batch_size, peak_bytes
from dnnbrain_captum.attr.occlusion import occlusion_grid_shape

__all__ = ["ChannelOcclusion", "shared_sweep", "top_grids"]

#: Occlusion settings the shared sweep covers (anything else keeps the public class).
_COVERED = {"sliding_window_shapes", "strides", "baselines", "reduction", "perturbations_per_eval"}


def shared_sweep(occlusion: Mapping[str, Any]) -> bool:
    """Whether the atlas's occlusion settings are covered by :class:`ChannelOcclusion`."""
    baseline = occlusion.get("baselines", 0.0)
    plain = isinstance(baseline, numbers.Real) and not isinstance(baseline, bool)
    pairs = all(
        isinstance(value, int) or (isinstance(value, (tuple, list)) and len(value) == 2)
        for value in (occlusion.get(key, 1) for key in ("sliding_window_shapes", "strides"))
    )
    return set(occlusion) <= _COVERED and plain and pairs and np.isfinite(float(baseline))


class ChannelOcclusion:
    """``attribute(x)`` = the occlusion maps of every selected channel: (N, M, rows, cols).

    Parameters
    ----------
    evaluator : ChannelActivations
        One layer's pass (probed), with the occlusion's reduction.
    channels : sequence of int
        The M selected channels, in the order of the result's second axis.
    """

    def __init__(self, evaluator: ChannelActivations, channels: Sequence[int]) -> None:
        if len(evaluator.layers) != 1:
            raise ValueError("ChannelOcclusion explains one layer")
        self.evaluator = evaluator
        self.forward_func = evaluator.forward_func
        self.layer = evaluator.layers[0]
        self.channels = torch.as_tensor(list(channels), dtype=torch.long)
        self._peak: int | None = None
        self._channels_last = True

    def attribute(
        self,
        inputs: Tensor,
        target: Any = None,
        sliding_window_shapes: int | tuple[int, int] = (11, 11),
        strides: int | tuple[int, int] = (2, 2),
        baselines: float = 0.0,
        reduction: str = "mean",
        perturbations_per_eval: int | None = None,
    ) -> Tensor:
        """Maps (N, M, n_rows, n_cols) of ``inputs`` (N, C, H, W); ``target`` is ignored
        (every selected channel is mapped) and ``reduction`` is the evaluator's."""
        x = on_model_device(self.forward_func, check_image_batch(inputs))
        window = pair(sliding_window_shapes, "sliding_window_shapes")
        stride = pair(strides, "strides")
        grid = occlusion_grid_shape((x.shape[-2], x.shape[-1]), window, stride)
        if min(grid) < 1:
            raise ValueError(f"window {window} is larger than the images {tuple(x.shape[-2:])}")
        if reduction != self.evaluator.reduction:
            raise ValueError(f"reduction {reduction!r} differs from the evaluator's")
        per_image, total = grid[0] * grid[1], x.shape[0] * grid[0] * grid[1]
        if perturbations_per_eval is not None:
            batch = positive_int(perturbations_per_eval, "perturbations_per_eval")
        else:
            if self._peak is None:
                self._peak = peak_bytes(self.forward_func, self.layer, x[:1])
            batch = batch_size(self._peak, x.device, total)
        pick = self.channels.to(x.device)
        with torch.no_grad():
            clean = self._values(x)[:, pick]
            occluded = torch.cat(
                [
                    self._values(self._occluded(x, start, batch, grid, window, stride, baselines))[
                        :, pick
                    ]
                    for start in range(0, total, batch)
                ]
            )
        drop = clean.repeat_interleave(per_image, dim=0) - occluded  # (N * G, M)
        return drop.view(x.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous().to(x.dtype)

    def _occluded(
        self,
        x: Tensor,
        start: int,
        batch: int,
        grid: tuple[int, int],
        window: tuple[int, int],
        stride: tuple[int, int],
        fill: float,
    ) -> Tensor:
        """Occluded images ``start`` to ``start + batch`` (image-major, windows row by row)."""
        per_image = grid[0] * grid[1]
        flat = torch.arange(start, min(start + batch, x.shape[0] * per_image), device=x.device)
        example, position = flat // per_image, flat % per_image
        top = (position // grid[1]) * stride[0]
        left = (position % grid[1]) * stride[1]
        images = x[example]  # a copy
        if self._channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        slot = torch.arange(len(flat), device=x.device)[:, None, None]
        rows = (top[:, None] + torch.arange(window[0], device=x.device))[:, :, None]
        cols = (left[:, None] + torch.arange(window[1], device=x.device))[:, None, :]
        images.permute(0, 2, 3, 1)[slot, rows, cols] = float(fill)
        return images

    def _values(self, images: Tensor) -> Tensor:
        """Every channel's value; channels-last batches until the model rejects one."""
        try:
            return self.evaluator.attribute(images)
        except RuntimeError:
            if not self._channels_last:
                raise
            self._channels_last = False  # e.g. a ``view`` before the layer
            return self.evaluator.attribute(images.contiguous())


def top_grids(results: np.ndarray, top: np.ndarray, distinct: np.ndarray) -> np.ndarray:
    """Each channel's maps of its top stimuli, (M * K, rows, cols) in channel × rank order,
    from the sweep's maps ``results`` (D, M, rows, cols) of the ``distinct`` stimuli."""
    where = np.searchsorted(distinct, top)  # (M, K) rows of ``results``
    channel = np.repeat(np.arange(top.shape[0]), top.shape[1])
    return results[where.reshape(-1), channel]
