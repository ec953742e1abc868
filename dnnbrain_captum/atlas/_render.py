"""Pictures of the atlas as PNG bytes: stimuli, heat maps over them, receptive-field boxes."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from dnnbrain_captum.visualization import to_display_image

__all__ = ["Painter"]

_BOX = (255, 40, 40)


class Painter:
    """Turns model-space tensors into PNG files' bytes.

    Parameters
    ----------
    mean, std : sequence of float, optional
        The model's input normalisation (model = (value - mean) / std), undone for display.
    min_size : int
        Pictures drawn on (the receptive-field box, the empirical field) are enlarged by an
        integer factor to at least this many pixels per side.
    """

    def __init__(
        self,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        min_size: int = 128,
    ) -> None:
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)
        self.min_size = min_size
        self._tables: dict[str, np.ndarray] = {}

    def display(self, image: Tensor | np.ndarray) -> np.ndarray:
        """A model-space image (C, H, W) as RGB floats in [0, 1], shape (H, W, 3)."""
        array = np.asarray(
            image.detach().cpu() if isinstance(image, Tensor) else image, dtype=np.float64
        )
        if self.mean is not None and self.std is not None and array.shape[0] == self.mean.size:
            array = array * self.std.reshape(-1, 1, 1) + self.mean.reshape(-1, 1, 1)
            array = array.clip(0.0, 1.0)
        if array.shape[0] not in (1, 3, 4):
            array = array[:1]
        return to_display_image(array)

    def stimulus(self, image: Tensor | np.ndarray) -> bytes:
        """PNG of a model-space image."""
        return png(self.display(image))

    def heat(
        self,
        values: np.ndarray,
        image: Tensor | np.ndarray,
        cmap: str = "inferno",
        alpha: float = 0.65,
    ) -> bytes:
        """PNG of a map (H, W), min-max scaled and coloured, laid over the image."""
        values = np.asarray(values, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
        colours = self._colours(scaled, cmap)
        base = self.display(image)
        return png(alpha * colours + (1.0 - alpha) * base.mean(axis=-1, keepdims=True))

    def field(self, values: np.ndarray, covered: np.ndarray, cmap: str = "viridis") -> bytes:
        """PNG of an empirical receptive-field map (R_h, R_w), enlarged; pixels no image
        covered (outside every image) are light grey and do not count for the colour scale."""
        values = np.asarray(values, dtype=np.float64)
        covered = np.asarray(covered, dtype=bool)
        seen = values[covered] if covered.any() else np.zeros(1)
        low, high = float(seen.min()), float(seen.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
        colours = self._colours(scaled.clip(0.0, 1.0), cmap)
        colours[~covered] = 0.85
        return png(self._enlarge(colours))

    def box(self, image: Tensor | np.ndarray, region: Sequence[Sequence[int]]) -> bytes:
        """PNG of the image, enlarged, with the half-open pixel box ``[(h0, h1), (w0, w1)]``."""
        from PIL import Image, ImageDraw

        base = self.display(image)
        factor = self._factor(base.shape[:2])
        picture = Image.fromarray(_bytes(self._enlarge(base)))
        (h0, h1), (w0, w1) = region
        width = max(1, factor // 2)
        ImageDraw.Draw(picture).rectangle(
            [w0 * factor, h0 * factor, w1 * factor - 1, h1 * factor - 1], outline=_BOX, width=width
        )
        return _encode(picture)

    def _colours(self, scaled: np.ndarray, cmap: str) -> np.ndarray:
        """RGB of values in [0, 1] by the matplotlib colour map ``cmap``: its lookup table,
        indexed as matplotlib indexes it (``floor(x * N)``, 1 -> ``N - 1``), read once."""
        if cmap not in self._tables:
            import matplotlib

            colour_map = matplotlib.colormaps[cmap]
            self._tables[cmap] = colour_map(np.arange(colour_map.N))[:, :3]
        table = self._tables[cmap]
        index = (scaled * len(table)).astype(np.int64).clip(0, len(table) - 1)
        return table[index]

    def _factor(self, shape: Sequence[int]) -> int:
        return max(1, -(-self.min_size // max(1, min(shape))))

    def _enlarge(self, rgb: np.ndarray) -> np.ndarray:
        factor = self._factor(rgb.shape[:2])
        return rgb.repeat(factor, axis=0).repeat(factor, axis=1)


def _bytes(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _encode(picture: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")  # type: ignore[attr-defined]
    return buffer.getvalue()


def png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB float image (H, W, 3) in [0, 1]."""
    from PIL import Image

    return _encode(Image.fromarray(_bytes(rgb)))
