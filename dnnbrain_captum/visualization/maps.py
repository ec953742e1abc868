"""Figures of pixel maps: saliency, upsampled activation maps and occlusion grids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from dnnbrain_captum.visualization._core import (
    _SIGN_CMAPS,
    SALIENCY_METHODS,
    ArrayLike,
    _map_2d,
    _map_panel,
    _new_figure,
    _pair,
    _show_image,
    _span,
    normalize_attribution,
    to_display_image,
)

__all__ = ["activation_map_figure", "occlusion_figure", "saliency_figure"]


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
    >>> import numpy as np
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
    if picture is not None and method == "masked_image":
        _map_panel(fig, ax, picture * np.abs(values)[:, :, None], title, colorbar=False)
        return fig
    blended = picture is not None and method == "blended_heat_map"
    if blended:
        ax.imshow(picture.mean(axis=-1), cmap="gray", vmin=0.0, vmax=1.0)
    _map_panel(
        fig,
        ax,
        values,
        title,
        colorbar=show_colorbar and method != "masked_image",
        cmap=cmap,
        vmin=vmin,
        vmax=1.0,
        **({"alpha": alpha_overlay} if blended else {}),
    )
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
    >>> import numpy as np
    >>> fig = activation_map_figure(np.zeros((8, 8)), np.ones((8, 8, 3)))
    >>> len(fig.axes)
    3
    """
    values = _map_2d(activation, "activation")
    picture = None if image is None else to_display_image(image)
    fig, axes = _new_figure(2 if picture is not None else 1)
    if picture is not None:
        _show_image(axes[0], picture, "image")
    low, high = _span(values)
    _map_panel(
        fig,
        axes[-1],
        values,
        title,
        under=picture,
        cmap=cmap,
        vmin=low,
        vmax=high,
        alpha=alpha_overlay if picture is not None else 1.0,
    )
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
    >>> import numpy as np
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
    _map_panel(
        fig,
        axes[1],
        values,
        title,
        under=picture,
        cmap=cmap,
        vmin=-bound,
        vmax=bound,
        alpha=alpha_overlay,
        extent=extent,
    )
    axes[1].set_xlim(-0.5, picture.shape[1] - 0.5)
    axes[1].set_ylim(picture.shape[0] - 0.5, -0.5)
    return fig
