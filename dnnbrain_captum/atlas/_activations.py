"""The atlas's streaming pass: every channel of every requested layer, for every stimulus, in one
early-exit forward pass per batch; and the top-K / bottom-K selection from its result."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dnnbrain_captum._utils.hooks import LayerCapture, _StopForward, run_to_layer
from dnnbrain_captum._utils.layers import layer_path
from dnnbrain_captum._utils.layouts import Layout, ReshapeTransform, resolve_layout
from dnnbrain_captum._utils.targets import check_reduction, reduce_per_example

__all__ = ["ChannelActivations", "on_model_device", "rank_stimuli"]


def on_model_device(model: nn.Module, images: Tensor) -> Tensor:
    """``images`` on the device of the model's first parameter (unchanged without parameters)."""
    first = next(iter(model.parameters()), None)
    return images if first is None else images.to(first.device)


class _Ordered(LayerCapture):
    """A capture that notes the order in which the captured layers ran; the pass stops once
    all ``total`` of them have run."""

    def __init__(self, module: nn.Module, order: list[nn.Module], total: int) -> None:
        super().__init__(module)
        self.order, self.total = order, total

    def _record(self, value: Any) -> Any:
        if self.value is None:
            self.order.append(self.module)
            self.stop = len(self.order) == self.total
        return super()._record(value)


class ChannelActivations:
    """``attribute(x)`` = every channel's activation at several layers: (N, C_1 + ... + C_L).

    One forward pass per batch with a capture on each layer; the pass stops once the layer
    that runs last has run (nothing downstream of it is computed). Column block ``l`` holds the
    ``C_l`` channels of ``layers[l]``, each channel's map reduced to one number per image by
    ``reduction`` (DNNBrain's channel mean by default). The object is what
    :func:`dnnbrain_captum.run_over` streams over a stimulus set for the atlas.

    Parameters
    ----------
    model : nn.Module
        The model (left as it was: the hooks are removed after every pass).
    layers : sequence of nn.Module
        Layers whose outputs are channels on a spatial grid: (N, C, H, W) tensors, or a
        layout that :mod:`dnnbrain_captum._utils.layouts` establishes (channels-last
        ``(N, H, W, C)``, e.g. Swin stages and ConvNeXt's Linear layers; ViT tokens
        ``(N, 1 + H * W, D)``), or any output that ``reshape_transform`` maps to (N, C, H, W).
    reduction : {"mean", "max", "sum"}
        How a channel map becomes one number.
    reshape_transform : callable or sequence of (callable or None), optional
        The user's ``f(output) -> (N, C, H, W)``, for every layer or one per layer (as the
        ``reshape_transform`` of the attribution classes).

    Examples
    --------
    >>> from dnnbrain_captum import digits_cnn, digits_images
    >>> model = digits_cnn()
    >>> images, _ = digits_images(n=4)
    >>> pass_ = ChannelActivations(model, [model.features[6], model.features[10]])
    >>> pass_.probe(images)
    [(48, 8, 8), (64, 8, 8)]
    >>> tuple(pass_.attribute(images).shape)
    (4, 112)
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[nn.Module],
        reduction: str = "mean",
        reshape_transform: ReshapeTransform | Sequence[ReshapeTransform | None] | None = None,
    ) -> None:
        if not layers:
            raise ValueError("layers is empty: give at least one layer")
        self.forward_func = model
        self.layers = list(layers)
        self.paths = [layer_path(model, layer) for layer in self.layers]
        self.reduction = check_reduction(reduction)
        if reshape_transform is None or callable(reshape_transform):
            self.transforms = [reshape_transform] * len(self.layers)
        else:
            self.transforms = list(reshape_transform)
            if len(self.transforms) != len(self.layers):
                raise ValueError(
                    f"reshape_transform holds {len(self.transforms)} entries for "
                    f"{len(self.layers)} layers"
                )
        self.last: nn.Module | None = None  # the layer that runs last (found by probe)
        self.widths: list[int] = []
        self.layouts: list[Layout] = []

    def probe(self, example: Tensor) -> list[tuple[int, ...]]:
        """Run one image through the model; return each layer's output shape (C, H, W).

        Also finds the layer that runs last (where later passes stop) and the channel
        counts (:attr:`widths`).

        Raises
        ------
        ValueError
            If a layer does not run, or its output cannot be read as (N, C, H, W): its
            layout is unknown (the message names the shape and ``reshape_transform``) or it
            has no spatial grid.
        """
        example = on_model_device(self.forward_func, example[:1])
        self.layouts = [
            resolve_layout(self.forward_func, layer, (example,), transform)
            for layer, transform in zip(self.layers, self.transforms, strict=True)
        ]
        order: list[nn.Module] = []
        captures = [_Ordered(layer, order, len(self.layers)) for layer in self.layers]
        with torch.no_grad(), contextlib.suppress(_StopForward):
            run_to_layer(self.forward_func, None, (example,), taps=captures)
        shapes = []
        for path, capture, layout in zip(self.paths, captures, self.layouts, strict=True):
            value = capture.value
            if value is None:
                raise ValueError(f"layer {path!r} did not run during the forward pass")
            raw = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            grid = layout(value)  # raises naming the shape and the way out
            if not isinstance(grid, Tensor) or grid.dim() != 4:
                read = tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__
                raise ValueError(
                    f"layer {path!r} gives {raw}, read as {read}; the atlas needs channels on "
                    "a spatial grid (N, C, H, W). Choose a layer with a grid, or pass "
                    "reshape_transform=f with f(output) -> (N, C, H, W)"
                )
            shapes.append(tuple(grid.shape[1:]))
        self.last = order[-1]
        self.widths = [s[0] for s in shapes]
        return shapes

    def attribute(self, inputs: Tensor, target: Any = None) -> Tensor:
        """Every channel's reduced activation: Tensor (N, sum of the layers' channels)."""
        inputs = on_model_device(self.forward_func, inputs)
        if self.last is None:
            self.probe(inputs)
        taps = [LayerCapture(layer) for layer in self.layers if layer is not self.last]
        with torch.no_grad():
            last = run_to_layer(self.forward_func, self.last, (inputs,), taps=taps)
        values = iter(t.value for t in taps)
        columns = []
        for layer, layout in zip(self.layers, self.layouts, strict=True):
            output = layout(last if layer is self.last else next(values))
            n, c = output.shape[:2]
            flat = reduce_per_example(output.reshape(n * c, -1), self.reduction)
            columns.append(flat.view(n, c))
        return torch.cat(columns, dim=1)


def rank_stimuli(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k and bottom-k stimuli of every column.

    Parameters
    ----------
    values : ndarray of shape (N, C)
        One activation per stimulus and channel.
    k : int
        How many, ``1 <= k <= N``.

    Returns
    -------
    top, bottom : ndarray of shape (C, k), int64
        Stimulus indices, highest activation first (``top``) and lowest first (``bottom``);
        equal activations are ordered by index (the first stimulus wins).

    Examples
    --------
    >>> top, bottom = rank_stimuli(np.array([[1.0], [3.0], [3.0], [0.0]]), 2)
    >>> top.tolist(), bottom.tolist()
    ([[1, 2]], [[3, 0]])
    """
    n = values.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"top_k must be between 1 and the number of stimuli ({n}), got {k}")
    if np.isnan(values).any():
        raise ValueError("the channel activations hold NaN (an unreadable stimulus?)")
    return _lowest(-values, k), _lowest(values, k)


def _lowest(values: np.ndarray, k: int) -> np.ndarray:
    """Per column, the indices of the k lowest values, lowest first, ties by index: equal to
    ``np.argsort(values, axis=0, kind="stable")[:k].T`` without sorting whole columns (a
    partition finds each column's k-th value; only the values up to it are sorted)."""
    n, m = values.shape
    if k >= n:
        return np.ascontiguousarray(np.argsort(values, axis=0, kind="stable")[:k].T)
    kth = np.partition(values, k - 1, axis=0)[k - 1]
    lowest = np.empty((m, k), dtype=np.int64)
    for j in range(m):
        candidates = np.flatnonzero(values[:, j] <= kth[j])  # ascending indices, ties included
        order = np.argsort(values[candidates, j], kind="stable")
        lowest[j] = candidates[order[:k]]
    return lowest
