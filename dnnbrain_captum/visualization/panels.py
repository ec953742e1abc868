"""Figures of images and regions: receptive fields, synthesis grids, minimal images."""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from dnnbrain_captum.visualization._core import (
    ArrayLike,
    _as_numpy,
    _decorate,
    _map_2d,
    _map_panel,
    _new_figure,
    _show_image,
    _span,
    to_display_image,
)

__all__ = [
    "empirical_rf_figure",
    "minimal_image_figure",
    "receptive_field_figure",
    "synthesis_grid",
]


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
    >>> import numpy as np
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
    >>> import numpy as np
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
    >>> import numpy as np
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
    >>> import numpy as np
    >>> fig = empirical_rf_figure(np.zeros((15, 15)), size=(6.0, 4.0))
    >>> fig.axes[0].get_title()
    'empirical receptive field\\nsize 6.0 x 4.0 px'
    """
    values = _map_2d(rf_map, "rf_map")
    fig, axes = _new_figure(1, panel=3.2)
    ax = axes[0]
    low, high = _span(values)
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
    _map_panel(fig, ax, values, title, cmap=cmap, vmin=low, vmax=high)
    return fig
