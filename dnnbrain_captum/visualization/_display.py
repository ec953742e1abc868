"""Where a figure goes: inline in a notebook, onto disk, or into a window.

Every figure helper returns a :class:`DisplayFigure`, a matplotlib ``Figure`` built with the
object API (nothing registered with ``pyplot``) that also renders itself for IPython's rich
display (``_repr_png_``): the last expression of a notebook cell, or ``display(fig)``, shows
it inline with no ``%matplotlib`` set-up. :func:`show` does what a tutorial needs in both
worlds: inline in a Jupyter kernel; elsewhere the figure is written as PNG into a folder (and
opened in a window when matplotlib's backend is an interactive one).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

from matplotlib.figure import Figure

__all__ = ["FIGURE_FORMATS", "DisplayFigure", "save_figure", "show"]

#: File formats :func:`save_figure` writes (the extension of the path chooses).
FIGURE_FORMATS: tuple[str, ...] = ("png", "svg", "pdf")
#: Environment variable naming the folder :func:`show` saves into outside a notebook.
FIGURES_ENV = "DNNBRAIN_CAPTUM_FIGURES"


class DisplayFigure(Figure):
    """A matplotlib ``Figure`` that IPython displays as a PNG image.

    Examples
    --------
    >>> fig = DisplayFigure(figsize=(1, 1))
    >>> fig._repr_png_()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """

    #: Resolution of the inline image.
    display_dpi: int = 100

    def _repr_png_(self) -> bytes:
        """The figure as PNG bytes (IPython's rich display protocol)."""
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=self.display_dpi)
        return buffer.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> None:
    """Write ``fig`` to ``path`` atomically and release its canvas.

    The format follows the extension (``.png``, ``.svg`` or ``.pdf``). The file is written
    beside ``path`` under a temporary name and renamed into place, so an interrupted call
    never leaves half a file.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or path-like
    dpi : int
        Resolution (dots per inch) of PNG output and of images embedded in SVG/PDF.

    Raises
    ------
    ValueError
        An extension other than png, svg or pdf, or ``dpi`` < 1.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from dnnbrain_captum.visualization import synthesis_grid
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     save_figure(synthesis_grid(np.zeros((1, 3, 4, 4))), pathlib.Path(tmp) / "a.svg")
    ...     (pathlib.Path(tmp) / "a.svg").read_text()[:5]
    '<?xml'
    """
    target = Path(path)
    kind = target.suffix.lower().lstrip(".")
    if kind not in FIGURE_FORMATS:
        raise ValueError(
            f"cannot save a figure as {target.name!r}: the extension must be one of "
            f"{', '.join('.' + f for f in FIGURE_FORMATS)}"
        )
    if isinstance(dpi, bool) or not isinstance(dpi, int) or dpi < 1:
        raise ValueError(f"dpi must be a positive integer, got {dpi!r}")
    handle, staged = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(handle, "wb") as stream:
            fig.savefig(stream, format=kind, dpi=dpi)
        os.replace(staged, target)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    fig.clear()


def _in_kernel() -> bool:
    """Whether this code runs inside a Jupyter kernel (IPython with a kernel attached)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _interactive_backend() -> bool:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("DISPLAY"):
        return False  # no window system: never resolve the backend (that imports pyplot)
    backend = matplotlib.get_backend().lower()
    return backend not in ("agg", "pdf", "ps", "svg", "pgf", "cairo", "template") and not (
        backend.startswith("module://matplotlib_inline")
    )


def show(
    fig: Figure, name: str, folder: str | os.PathLike[str] | None = None, dpi: int = 100
) -> Path | None:
    """Show a figure where the code runs.

    * In a Jupyter kernel: displayed inline (``IPython.display.display``); nothing is written.
    * Elsewhere (a tutorial run as a script): written to ``folder/name.png`` and, when
      matplotlib's backend is interactive, also opened in a window.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        A figure from this module (or any ``Figure``).
    name : str
        File name without extension, e.g. ``"01_class_saliency"``.
    folder : path, optional
        Where to save outside a notebook (default: ``$DNNBRAIN_CAPTUM_FIGURES`` or
        ``./figures``); created when missing.
    dpi : int
        Resolution of the saved PNG.

    Returns
    -------
    Path or None
        The file written, or None in a notebook.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from dnnbrain_captum.visualization import synthesis_grid
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     show(synthesis_grid(np.zeros((1, 3, 4, 4))), "grid", folder=tmp).name
    'grid.png'
    """
    if _in_kernel():
        from IPython.display import display

        display(fig)
        return None
    if not name or any(sep in name for sep in ("/", "\\")) or name.startswith("."):
        raise ValueError(f"name must be a plain file name without extension, got {name!r}")
    where = Path(folder if folder is not None else os.environ.get(FIGURES_ENV, "figures"))
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}.png"
    if _interactive_backend():
        _open_window(fig)
    save_figure(fig, path, dpi=dpi)
    return path


def _open_window(fig: Figure) -> None:
    """Show an object-API figure in a window of the interactive backend (blocking)."""
    import matplotlib.pyplot as plt

    window = plt.figure(figsize=fig.get_size_inches(), dpi=fig.dpi)
    window.figimage(_as_pixels(fig), resize=True)
    plt.show()
    plt.close(window)


def _as_pixels(fig: Figure) -> object:
    from matplotlib.image import imread

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    buffer.seek(0)
    return imread(buffer, format="png")
