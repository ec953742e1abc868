"""Parse the ``baselines`` argument (what replaces removed pixels) into a tensor."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from dnnbrain_captum._utils.validation import check_finite, finite

__all__ = ["baseline_images"]


def baseline_images(
    x: Tensor, baselines: Any, named: Mapping[str, Callable[[Tensor], Tensor]]
) -> Tensor:
    """The fill values for a batch, as a tensor that broadcasts to ``x``.

    Parameters
    ----------
    x : Tensor of shape (N, C, H, W)
        The images.
    baselines : float, Tensor or str
        A number (one value everywhere), a tensor broadcastable to ``x`` (per example or
        shared), or one of the names in ``named``.
    named : mapping of str to callable
        The named fills this method offers, each ``f(x) -> Tensor`` broadcastable to ``x``.

    Returns
    -------
    Tensor of 4 dimensions, broadcastable to ``x``, on its device and dtype.

    Raises
    ------
    TypeError
        For anything but a number, a tensor or a string.
    ValueError
        For an unknown name, NaN or infinite values, or a tensor that does not broadcast to
        ``x``.
    """
    choices = " or ".join(repr(name) for name in named)
    expected = f"a number, a tensor or {choices}" if named else "a number or a tensor"
    if isinstance(baselines, str):
        if baselines not in named:
            raise ValueError(f"baselines must be {expected}, got {baselines!r}")
        return named[baselines](x)
    if isinstance(baselines, bool):
        raise TypeError(f"baselines must be {expected}, got {baselines!r}")
    if isinstance(baselines, (int, float)):
        fill = finite(baselines, "baselines")
        value = torch.full((1, 1, 1, 1), fill, dtype=x.dtype, device=x.device)
        return check_finite(value, f"baselines={fill} (as {x.dtype})")
    if not isinstance(baselines, Tensor):
        raise TypeError(f"baselines must be {expected}, got {type(baselines).__name__}")
    check_finite(baselines, "baselines")
    value = baselines.to(device=x.device, dtype=x.dtype)
    check_finite(value, f"baselines (as {x.dtype})")
    while value.dim() < 4:
        value = value.unsqueeze(0)
    try:
        torch.broadcast_shapes(value.shape, x.shape)
    except RuntimeError:
        raise ValueError(
            f"baselines of shape {tuple(baselines.shape)} does not broadcast to the inputs "
            f"{tuple(x.shape)}"
        ) from None
    if value.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"baselines has {value.shape[0]} examples but the batch has {x.shape[0]}")
    return value
