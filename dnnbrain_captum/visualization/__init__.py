"""Figures for every result of the package, as matplotlib ``Figure`` objects.

Each helper takes one example (no batch dimension) as a tensor or NumPy array and returns a
new :class:`DisplayFigure` (a :class:`matplotlib.figure.Figure`) built with the object API:
nothing is registered with ``pyplot``, so the helpers are safe under any backend (Agg
included), leak no global state, and a figure is freed as soon as it is no longer referenced.
In Jupyter a returned figure shows itself inline, with no ``%matplotlib`` line;
:func:`show` displays it in a notebook and saves it as PNG in a script; :func:`save_figure`
writes PNG, SVG or PDF and releases the canvas.

Unlike ``captum.attr.visualization.visualize_image_attr``, every helper accepts an all-zero
map (it is drawn as a blank map instead of raising), channel-first images as our classes
return them, and images outside [0, 1] (they are min–max rescaled for display). To use
Captum's own function on one of our maps, see ``docs/captum.md``.

Modules: :mod:`~dnnbrain_captum.visualization.maps` (saliency, activation maps, occlusion),
:mod:`~dnnbrain_captum.visualization.panels` (receptive fields, synthesis grids, minimal
images), ``_display`` (display, saving) and ``_core`` (array plumbing).

Examples
--------
>>> import torch
>>> fig = saliency_figure(torch.zeros(3, 8, 8), torch.rand(3, 8, 8))
>>> [ax.get_title() for ax in fig.axes[:2]]
['image', 'saliency']
>>> hasattr(fig, "_repr_png_")  # IPython shows it inline
True
"""

from __future__ import annotations

from dnnbrain_captum.visualization._core import (
    SALIENCY_METHODS,
    SIGNS,
    normalize_attribution,
    to_display_image,
)
from dnnbrain_captum.visualization._display import (
    FIGURE_FORMATS,
    DisplayFigure,
    save_figure,
    show,
)
from dnnbrain_captum.visualization.maps import (
    activation_map_figure,
    occlusion_figure,
    saliency_figure,
)
from dnnbrain_captum.visualization.panels import (
    empirical_rf_figure,
    minimal_image_figure,
    receptive_field_figure,
    synthesis_grid,
)

__all__ = [
    "FIGURE_FORMATS",
    "SALIENCY_METHODS",
    "SIGNS",
    "DisplayFigure",
    "activation_map_figure",
    "empirical_rf_figure",
    "minimal_image_figure",
    "normalize_attribution",
    "occlusion_figure",
    "receptive_field_figure",
    "saliency_figure",
    "save_figure",
    "show",
    "synthesis_grid",
    "to_display_image",
]
