"""Shared plumbing of the figure helpers: arrays in, display-ready arrays and new figures out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

SIGNS = ("absolute_value", "positive", "negative", "all")
SALIENCY_METHODS = ("heat_map", "blended_heat_map", "masked_image")
_SIGN_CMAPS = {"absolute_value": "Blues", "positive": "Greens", "negative": "Reds", "all": "bwr"}

ArrayLike = Any  # a torch.Tensor, a NumPy array or anything ``np.asarray`` takes


def _as_numpy(value: ArrayLike, name: str) -> np.ndarray:
    """A float64 NumPy copy of a tensor / array (detached, on the CPU)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        kind = type(value).__name__
        raise TypeError(f"{name} must be a tensor or an array, got {kind}") from None
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _channel_last(array: np.ndarray, name: str) -> np.ndarray:
    """(C, H, W) or (H, W, C) or (H, W) → (H, W, C) with C in {1, 3, 4}."""
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3:
        raise ValueError(
            f"{name} must have shape (C, H, W), (H, W, C) or (H, W), got {array.shape}"
        )
    if array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        return np.moveaxis(array, 0, -1)
    if array.shape[-1] in (1, 3, 4):
        return array
    if array.shape[0] in (1, 3, 4):
        return np.moveaxis(array, 0, -1)
    raise ValueError(f"{name} has shape {array.shape}: no axis of size 1, 3 or 4 for channels")


def _map_2d(value: ArrayLike, name: str) -> np.ndarray:
    """A 2-D map; a (C, H, W) or (H, W, C) input is summed over its channels."""
    array = _as_numpy(value, name)
    if array.ndim == 3:
        array = _channel_last(array, name).sum(axis=-1)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D map (H, W) or (C, H, W), got shape {array.shape}")
    return array


def to_display_image(image: ArrayLike) -> np.ndarray:
    """An image ready for ``imshow``: shape (H, W, 3), float values in [0, 1].

    Parameters
    ----------
    image : Tensor or array of shape (C, H, W), (H, W, C) or (H, W)
        One image, channel-first (as the package's tensors) or channel-last. Values already in
        [0, 1] are kept; integer (uint8) images are divided by 255; anything else (an
        ImageNet-normalised tensor, a synthesised image) is min–max rescaled. A constant
        image becomes mid grey. One channel is repeated to grey RGB.

    Returns
    -------
    ndarray of shape (H, W, 3)

    Examples
    --------
    >>> to_display_image(np.full((3, 2, 2), 7.0))[0, 0].tolist()
    [0.5, 0.5, 0.5]
    >>> float(to_display_image(np.array([[-2.0, 2.0]])).max())
    1.0
    """
    if hasattr(image, "is_floating_point"):
        integer = not image.is_floating_point()
    else:
        integer = np.issubdtype(np.asarray(image).dtype, np.integer)
    array = _channel_last(_as_numpy(image, "image"), "image")
    if integer:
        array = array / 255.0
    if array.shape[-1] == 4:
        array = array[..., :3]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    low, high = float(array.min()), float(array.max())
    if low >= 0.0 and high <= 1.0:
        return array
    if high - low <= 0.0:
        return np.full_like(array, 0.5)
    return (array - low) / (high - low)


def normalize_attribution(
    attribution: ArrayLike, sign: str = "absolute_value", outlier_perc: float = 2.0
) -> np.ndarray:
    """Scale a map to [−1, 1] (or [0, 1]), ignoring the top ``outlier_perc`` % of its mass.

    The map (summed over channels when 3-D) is filtered by ``sign`` and divided by the value
    at which the cumulative sum of the sorted absolute values reaches ``100 − outlier_perc`` %
    of the total, as Captum's ``visualize_image_attr`` does. An all-zero map (or a sign with
    nothing to show) gives zeros instead of an error.

    Parameters
    ----------
    attribution : Tensor or array of shape (H, W), (C, H, W) or (H, W, C)
    sign : {"absolute_value", "positive", "negative", "all"}
        ``absolute_value`` shows |a|, ``positive`` max(a, 0), ``negative`` max(−a, 0) (as
        positive numbers), ``all`` the signed map in [−1, 1].
    outlier_perc : float in [0, 100)
        Share of the largest values clipped to 1.

    Returns
    -------
    ndarray of shape (H, W)

    Examples
    --------
    >>> normalize_attribution(np.zeros((2, 2))).tolist()
    [[0.0, 0.0], [0.0, 0.0]]
    >>> normalize_attribution(np.array([[1.0, -3.0]]), sign="all", outlier_perc=0).tolist()
    [[0.3333333333333333, -1.0]]
    """
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}")
    if not 0.0 <= float(outlier_perc) < 100.0:
        raise ValueError(f"outlier_perc must lie in [0, 100), got {outlier_perc}")
    values = _map_2d(attribution, "attribution")
    if sign == "absolute_value":
        values = np.abs(values)
    elif sign == "positive":
        values = np.clip(values, 0.0, None)
    elif sign == "negative":
        values = np.clip(-values, 0.0, None)
    magnitudes = np.sort(np.abs(values).ravel())
    total = magnitudes.sum()
    if total <= 0.0:
        return np.zeros_like(values)
    cumulative = np.cumsum(magnitudes)
    index = int(np.searchsorted(cumulative, total * (100.0 - outlier_perc) / 100.0))
    scale = magnitudes[min(index, magnitudes.size - 1)]
    if scale <= 0.0:
        scale = magnitudes[-1]
    return np.clip(values / scale, -1.0, 1.0)


def _show_image(ax: Any, image: np.ndarray, title: str | None) -> None:
    ax.imshow(image, interpolation="nearest")
    _decorate(ax, title)


def _decorate(ax: Any, title: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)


def _colorbar(fig: Figure, mappable: Any, ax: Any) -> None:
    fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04)


def _span(values: np.ndarray) -> tuple[float, float]:
    """``(min, max)`` of a map for its colour scale; a constant map gets a span of 1."""
    low, high = float(values.min()), float(values.max())
    return low, (high if high > low else low + 1.0)


def _map_panel(
    fig: Figure,
    ax: Any,
    values: np.ndarray,
    title: str | None,
    under: np.ndarray | None = None,
    colorbar: bool = True,
    **imshow: Any,
) -> Any:
    """Draw a 2-D map on ``ax`` (over the image ``under`` when given), title it and give it
    a colour bar; the plumbing shared by every map figure. Returns the map's artist."""
    if under is not None:
        ax.imshow(under)
    mappable = ax.imshow(values, interpolation="nearest", **imshow)
    _decorate(ax, title)
    if colorbar:
        _colorbar(fig, mappable, ax)
    return mappable


def _new_figure(ncols: int, nrows: int = 1, panel: float = 2.6) -> tuple[Figure, list[Any]]:
    from dnnbrain_captum.visualization._display import DisplayFigure

    fig = DisplayFigure(figsize=(panel * ncols + 0.4, panel * nrows + 0.3), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, k + 1) for k in range(nrows * ncols)]
    return fig, axes


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    first, second = value
    return int(first), int(second)
