"""Figures for every result of the package, as matplotlib ``Figure`` objects.

Each helper takes one example (no batch dimension) as a tensor or NumPy array and returns a
new :class:`matplotlib.figure.Figure` built with the object API: nothing is registered with
``pyplot``, so the helpers are safe under any backend (Agg included), leak no global state,
and a figure is freed as soon as it is no longer referenced. :func:`save_figure` writes a
figure to disk and releases its canvas.

Unlike ``captum.attr.visualization.visualize_image_attr``, every helper accepts an all-zero
map (it is drawn as a blank map instead of raising), channel-first images as our classes
return them, and images outside [0, 1] (they are min–max rescaled for display).

Examples
--------
>>> import torch
>>> fig = saliency_figure(torch.zeros(3, 8, 8), torch.rand(3, 8, 8))
>>> [ax.get_title() for ax in fig.axes[:2]]
['image', 'saliency']
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = [
    "activation_map_figure",
    "empirical_rf_figure",
    "minimal_image_figure",
    "normalize_attribution",
    "occlusion_figure",
    "receptive_field_figure",
    "saliency_figure",
    "save_figure",
    "synthesis_grid",
    "to_display_image",
]

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


def _new_figure(ncols: int, nrows: int = 1, panel: float = 2.6) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(panel * ncols + 0.4, panel * nrows + 0.3), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, k + 1) for k in range(nrows * ncols)]
    return fig, axes


def saliency_figure(
    attribution: ArrayLike,
    image: ArrayLike | None = None,
    method: str = "blended_heat_map",
    sign: str = "absolute_value",
    outlier_perc: float = 2.0,
    cmap: str | None = None,
    alpha_overlay: float = 0.5,
    title: str | None = "saliency",
    show_colorbar: bool = True,
) -> Figure:
    """A saliency (or any pixel attribution) map, next to and over the image.

    Like ``captum.attr.visualization.visualize_image_attr``, with the image on the left when
    given. The map is summed over channels and normalised by :func:`normalize_attribution`.

    Parameters
    ----------
    attribution : Tensor or array of shape (C, H, W), (H, W, C) or (H, W)
        One example's attribution, e.g. ``VanillaSaliencyImage(...).attribute(x)[0]``.
    image : Tensor or array, optional
        The image (any layout and range accepted by :func:`to_display_image`). Needed for
        ``blended_heat_map`` and ``masked_image``; without it a plain heat map is drawn.
    method : {"heat_map", "blended_heat_map", "masked_image"}
        ``blended_heat_map`` draws the map over a grey copy of the image; ``masked_image``
        multiplies the image by the normalised map.
    sign : {"absolute_value", "positive", "negative", "all"}
    outlier_perc : float
        Percentage of the map's mass clipped to the top colour.
    cmap : str, optional
        Colour map (default by sign: Blues, Greens, Reds, bwr).
    alpha_overlay : float
        Opacity of the map in ``blended_heat_map``.
    title : str, optional
        Title of the map panel.
    show_colorbar : bool
        Add a colour bar to the map panel.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import torch
    >>> fig = saliency_figure(torch.randn(3, 16, 16), torch.rand(3, 16, 16), sign="all")
    >>> len(fig.axes)  # image, map, colour bar
    3
    """
    if method not in SALIENCY_METHODS:
        raise ValueError(f"method must be one of {SALIENCY_METHODS}, got {method!r}")
    values = normalize_attribution(attribution, sign, outlier_perc)
    picture = None if image is None else to_display_image(image)
    if picture is not None and picture.shape[:2] != values.shape:
        raise ValueError(
            f"image of size {picture.shape[:2]} and attribution of size {values.shape} differ"
        )
    cmap = cmap or _SIGN_CMAPS[sign]
    vmin = -1.0 if sign == "all" else 0.0
    fig, axes = _new_figure(2 if picture is not None else 1)
    if picture is not None:
        _show_image(axes[0], picture, "image")
    ax = axes[-1]
    if picture is None or method == "heat_map":
        mappable = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=1.0, interpolation="nearest")
    elif method == "blended_heat_map":
        ax.imshow(picture.mean(axis=-1), cmap="gray", vmin=0.0, vmax=1.0)
        mappable = ax.imshow(
            values, cmap=cmap, vmin=vmin, vmax=1.0, alpha=alpha_overlay, interpolation="nearest"
        )
    else:
        mappable = ax.imshow(picture * np.abs(values)[:, :, None], interpolation="nearest")
    _decorate(ax, title)
    if show_colorbar and method != "masked_image":
        _colorbar(fig, mappable, ax)
    return fig


def activation_map_figure(
    activation: ArrayLike,
    image: ArrayLike | None = None,
    alpha_overlay: float = 0.5,
    cmap: str = "jet",
    title: str | None = "activation map",
) -> Figure:
    """An upsampled activation map, next to and over the image.

    Parameters
    ----------
    activation : Tensor or array of shape (H, W)
        E.g. ``UpsamplingActivationMapping(...).attribute(x, target=c)[0]``.
    image : Tensor or array, optional
        The image of the same size, drawn on the left and under the map.
    alpha_overlay : float
        Opacity of the map over the image.
    cmap : str
        Colour map of the activation.
    title : str, optional
        Title of the map panel.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = activation_map_figure(np.zeros((8, 8)), np.ones((8, 8, 3)))
    >>> len(fig.axes)
    3
    """
    values = _map_2d(activation, "activation")
    picture = None if image is None else to_display_image(image)
    fig, axes = _new_figure(2 if picture is not None else 1)
    if picture is not None:
        _show_image(axes[0], picture, "image")
        axes[1].imshow(picture)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1.0
    mappable = axes[-1].imshow(
        values,
        cmap=cmap,
        vmin=low,
        vmax=high,
        alpha=alpha_overlay if picture is not None else 1.0,
        interpolation="nearest",
    )
    _decorate(axes[-1], title)
    _colorbar(fig, mappable, axes[-1])
    return fig


def occlusion_figure(
    discrepancy: ArrayLike,
    image: ArrayLike,
    sliding_window_shapes: int | Sequence[int],
    strides: int | Sequence[int],
    alpha_overlay: float = 0.6,
    cmap: str = "RdBu_r",
    title: str | None = "occlusion",
) -> Figure:
    """An occlusion discrepancy grid, stretched over the image it was computed on.

    Grid entry (r, c) is drawn as a cell centred on the centre of its window (top-left pixel
    (r·s_h, c·s_w), size (h, w)), so the map lines up with the image regions it describes.
    The colour scale is symmetric around 0 (red: occluding there lowered the target).

    Parameters
    ----------
    discrepancy : Tensor or array of shape (n_rows, n_cols)
        E.g. ``OccluderDiscrepancyMapping(...).attribute(x, ...)[0]``.
    image : Tensor or array
        The image the grid was computed on.
    sliding_window_shapes, strides : int or (int, int)
        The window (h, w) and strides (s_h, s_w) used for the grid.
    alpha_overlay : float
        Opacity of the grid over the image.
    cmap : str
        A diverging colour map.
    title : str, optional
        Title of the overlay panel.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = occlusion_figure(np.zeros((7, 7)), np.zeros((3, 32, 32)), (8, 8), (4, 4))
    >>> fig.axes[1].get_title()
    'occlusion'
    """
    values = _map_2d(discrepancy, "discrepancy")
    picture = to_display_image(image)
    (wh, ww), (sh, sw) = _pair(sliding_window_shapes), _pair(strides)
    rows, cols = values.shape
    # pixel k spans [k - 0.5, k + 0.5] in imshow; window (r, c) centre is r*sh + (wh - 1) / 2
    top = (wh - 1) / 2.0 - sh / 2.0
    left = (ww - 1) / 2.0 - sw / 2.0
    extent = (left, left + cols * sw, top + rows * sh, top)
    bound = float(np.abs(values).max()) or 1.0
    fig, axes = _new_figure(2)
    _show_image(axes[0], picture, "image")
    axes[1].imshow(picture)
    mappable = axes[1].imshow(
        values,
        cmap=cmap,
        vmin=-bound,
        vmax=bound,
        alpha=alpha_overlay,
        extent=extent,
        interpolation="nearest",
    )
    axes[1].set_xlim(-0.5, picture.shape[1] - 0.5)
    axes[1].set_ylim(picture.shape[0] - 0.5, -0.5)
    _decorate(axes[1], title)
    _colorbar(fig, mappable, axes[1])
    return fig


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    first, second = value
    return int(first), int(second)


def receptive_field_figure(
    image: ArrayLike,
    regions: Sequence[Sequence[Sequence[float]]],
    labels: Sequence[str] | None = None,
    title: str | None = "receptive field",
) -> Figure:
    """Receptive-field boxes drawn on the image.

    Parameters
    ----------
    image : Tensor or array
        The image (e.g. the model input).
    regions : sequence of ``((h0, h1), (w0, w1))``
        Half-open pixel intervals, as ``TheoreticalReceptiveField.find_region`` returns;
        one box per region.
    labels : sequence of str, optional
        A legend entry per box.
    title : str, optional
        Title of the panel.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = receptive_field_figure(np.zeros((32, 32)), [((0, 10), (4, 20))], ["conv3 (0, 0)"])
    >>> len(fig.axes[0].patches)
    1
    """
    picture = to_display_image(image)
    fig, axes = _new_figure(1, panel=3.2)
    ax = axes[0]
    _show_image(ax, picture, title)
    colours = ("#ffd400", "#00e5ff", "#ff3df0", "#7CFC00", "#ff7f0e")
    for k, region in enumerate(regions):
        (h0, h1), (w0, w1) = region
        box = Rectangle(
            (float(w0) - 0.5, float(h0) - 0.5),
            float(w1) - float(w0),
            float(h1) - float(h0),
            fill=False,
            linewidth=2,
            edgecolor=colours[k % len(colours)],
            label=None if labels is None else labels[k],
        )
        ax.add_patch(box)
    ax.set_xlim(-0.5, picture.shape[1] - 0.5)
    ax.set_ylim(picture.shape[0] - 0.5, -0.5)
    if labels:
        ax.legend(loc="lower right", fontsize=7, framealpha=0.6)
    return fig


def synthesis_grid(
    images: ArrayLike,
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    title: str | None = None,
) -> Figure:
    """A grid of images, e.g. one synthesised image per channel.

    Each image is rescaled for display on its own (:func:`to_display_image`), since
    synthesised images are unbounded.

    Parameters
    ----------
    images : Tensor or array of shape (N, C, H, W) or (N, H, W, C)
        The images.
    titles : sequence of str, optional
        One title per image (e.g. ``"channel 3"``).
    ncols : int, optional
        Number of columns (default: up to 8).
    title : str, optional
        Title of the whole figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = synthesis_grid(np.random.rand(5, 3, 8, 8), [f"ch {k}" for k in range(5)], ncols=3)
    >>> sum(ax.get_visible() for ax in fig.axes)
    5
    """
    array = _as_numpy(images, "images")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[0] == 0:
        raise ValueError(f"images must have shape (N, C, H, W) with N >= 1, got {array.shape}")
    n = array.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} images")
    ncols = min(n, 8) if ncols is None else max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    fig, axes = _new_figure(ncols, nrows, panel=1.8)
    for k, ax in enumerate(axes):
        if k >= n:
            ax.set_visible(False)
            continue
        _show_image(ax, to_display_image(array[k]), None if titles is None else titles[k])
    if title is not None:
        fig.suptitle(title, fontsize=10)
    return fig


def minimal_image_figure(
    original: ArrayLike,
    minimal: ArrayLike,
    mask: ArrayLike | None = None,
    titles: Sequence[str] = ("original", "minimal image", "kept region"),
) -> Figure:
    """A minimal (or masked) image next to the original, optionally with the kept region.

    Parameters
    ----------
    original : Tensor or array
        The original image.
    minimal : Tensor or array
        The reduced image of the same size (``MinimalParcelImage``, ``MaskedImage``, ...).
    mask : Tensor or array of shape (H, W) or (1, H, W), optional
        The kept region (1) versus the removed one (0), shown as a third panel.
    titles : sequence of str
        Panel titles.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = minimal_image_figure(np.random.rand(3, 8, 8), np.zeros((3, 8, 8)), np.zeros((8, 8)))
    >>> [ax.get_title() for ax in fig.axes]
    ['original', 'minimal image', 'kept region']
    """
    panels = [to_display_image(original), to_display_image(minimal)]
    if mask is not None:
        panels.append(_map_2d(mask, "mask"))
    fig, axes = _new_figure(len(panels))
    for k, (ax, panel) in enumerate(zip(axes, panels, strict=True)):
        if panel.ndim == 2:
            low = min(0.0, float(panel.min()))
            ax.imshow(panel, cmap="gray", vmin=low, interpolation="nearest")
            _decorate(ax, titles[k] if k < len(titles) else None)
        else:
            _show_image(ax, panel, titles[k] if k < len(titles) else None)
    return fig


def empirical_rf_figure(
    rf_map: ArrayLike,
    size: Sequence[float] | None = None,
    cmap: str = "hot",
    title: str | None = "empirical receptive field",
) -> Figure:
    """The mean RF-aligned map of an empirical receptive field, with its size estimate.

    Parameters
    ----------
    rf_map : Tensor or array of shape (R, R) (or (Rh, Rw))
        ``EmpiricalReceptiveField(...).compute(...).map``.
    size : (float, float), optional
        The size estimate (h, w) in pixels, drawn as a centred dashed box and in the title.
    cmap : str
        Colour map.
    title : str, optional
        Title of the panel.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = empirical_rf_figure(np.zeros((15, 15)), size=(6.0, 4.0))
    >>> fig.axes[0].get_title()
    'empirical receptive field\\nsize 6.0 x 4.0 px'
    """
    values = _map_2d(rf_map, "rf_map")
    fig, axes = _new_figure(1, panel=3.2)
    ax = axes[0]
    low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1.0
    mappable = ax.imshow(values, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
    if size is not None:
        sh, sw = float(size[0]), float(size[1])
        ch, cw = (values.shape[0] - 1) / 2.0, (values.shape[1] - 1) / 2.0
        ax.add_patch(
            Rectangle(
                (cw - sw / 2.0, ch - sh / 2.0),
                sw,
                sh,
                fill=False,
                linestyle="--",
                linewidth=1.5,
                edgecolor="#00e5ff",
            )
        )
        title = f"{title or ''}\nsize {sh:.1f} x {sw:.1f} px".lstrip("\n")
    _decorate(ax, title)
    _colorbar(fig, mappable, ax)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> None:
    """Write ``fig`` to ``path`` (format from the extension) and release its canvas.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or path-like
    dpi : int

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     save_figure(synthesis_grid(np.zeros((1, 3, 4, 4))), pathlib.Path(tmp) / "a.png")
    ...     (pathlib.Path(tmp) / "a.png").stat().st_size > 0
    True
    """
    fig.savefig(os.fspath(path), dpi=dpi)
    fig.clear()
