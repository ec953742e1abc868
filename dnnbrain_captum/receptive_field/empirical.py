"""Empirical receptive field: where a layer's best unit actually looks, averaged over images."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from captum.log import log_usage
from torch import Tensor, nn
from tqdm.auto import tqdm

from dnnbrain_captum._utils.aliases import captum_keyword_aliases
from dnnbrain_captum._utils.layers import layer_path
from dnnbrain_captum._utils.targets import channel_maps, layer_output
from dnnbrain_captum._utils.validation import check_image_batch, pair
from dnnbrain_captum.attr.occlusion import OccluderDiscrepancyMapping
from dnnbrain_captum.attr.upsampling import UpsamplingActivationMapping
from dnnbrain_captum.receptive_field.theoretical import (
    LayerReceptiveField,
    TheoreticalReceptiveField,
)

__all__ = ["EmpiricalRF", "EmpiricalReceptiveField", "occlusion_pixel_map"]

ALIGNMENTS = ("activation", "map")


class EmpiricalRF(NamedTuple):
    """Result of :meth:`EmpiricalReceptiveField.attribute`.

    Attributes
    ----------
    map : Tensor of shape (R_h, R_w)
        Mean engine map over the theoretical receptive field of each image's best unit,
        aligned on that field (row 0 = the field's first row). Same dtype/device as inputs.
    size : Tensor of shape (2,)
        (h, w) in pixels (int64): extent of the part of ``map`` that reaches
        ``size_threshold`` of its range, around its peak.
    """

    map: Tensor
    size: Tensor


def occlusion_pixel_map(
    grid: Tensor, image_size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]
) -> Tensor:
    """Put an occlusion grid into pixel coordinates.

    Grid row r is the window covering pixels ``[r*s, r*s + h)``, centred on pixel
    ``r*s + (h - 1)/2``. Each pixel gets the value interpolated linearly between the two
    nearest window centres (per axis), and the value of the first/last window beyond the
    first/last centre. With stride 1 and odd windows this is the grid itself, shifted to
    the window centres.

    Parameters
    ----------
    grid : Tensor of shape (N, n_rows, n_cols)
        Output of :class:`~dnnbrain_captum.attr.occlusion.OccluderDiscrepancyMapping`.
    image_size : (H, W)
    window, stride : (h, w), (s_h, s_w)
        The occluder's window and strides.

    Returns
    -------
    Tensor of shape (N, H, W)

    Examples
    --------
    >>> grid = torch.tensor([[[1.0, 3.0]]])    # windows 3 wide at columns 0 and 2
    >>> occlusion_pixel_map(grid, (3, 6), (3, 3), (2, 2))[0, 0]
    tensor([1., 1., 2., 3., 3., 3.])
    """
    result = grid
    for axis in range(2):
        n, w, s = grid.shape[1 + axis], window[axis], stride[axis]
        pixel = torch.arange(image_size[axis], device=grid.device, dtype=torch.float64)
        position = ((pixel - (w - 1) / 2) / s).clamp(0, n - 1)
        low = position.floor().long()
        high = (low + 1).clamp(max=n - 1)
        frac = (position - low).to(grid.dtype)
        dim = 1 + axis
        shape = [1, 1, 1]
        shape[dim] = -1
        result = result.index_select(dim, low) * (1 - frac.view(shape)) + result.index_select(
            dim, high
        ) * frac.view(shape)
    return result


@captum_keyword_aliases
class EmpiricalReceptiveField:
    """The receptive field a layer's units actually use, measured on images.

    For every image the engine gives a map in pixel coordinates (the upsampled activation
    map of a channel, or the occlusion discrepancy map); the map is cut out over the
    theoretical receptive field of the image's *best unit* and these aligned cut-outs are
    averaged (Zhou et al. 2015). The size estimate is the extent of the averaged map's
    peak region.

    Parameters
    ----------
    engine : UpsamplingActivationMapping or OccluderDiscrepancyMapping
        The mapping method, built on the model and the layer whose field is measured (the
        layer must have a spatial output).

    Notes
    -----
    **Best unit.** ``alignment="activation"`` (default, Zhou et al.): the position (i, j) of
    the highest activation of the target channel at the layer (one early-exit forward pass
    per batch); with a unit target ``(c, i, j)`` (occlusion engine) that unit.
    ``alignment="map"`` (DNNBrain's rule, for callable targets too): the unit whose
    theoretical box has the highest mean of the engine map, the box counted at its full
    size R_h × R_w with the part outside the image at the map's minimum (so clipped border
    boxes are not favoured). Ties go to the first unit in row-major order.

    **Map.** Unit (i, j)'s theoretical box is rows ``[i*jh - Ph, i*jh - Ph + R_h)`` and
    columns likewise (:class:`TheoreticalReceptiveField`, computed once per input size and
    reused). Its part inside the image is copied into an R_h × R_w canvas at the same offset;
    each canvas pixel is averaged over the images whose box covers it there (pixels outside
    the image are missing, not zero), and is 0 where no image covers it. So ``map[y, x]``
    is the mean engine value at offset (y, x) from the corner of the best unit's
    theoretical field: the empirical field drawn inside the theoretical one.

    **Fields not evenly spaced** (Swin's shifted-window and MaxViT's block and grid
    attention, upsampling, uneven adaptive pooling): a unit's box is its exact region
    (:meth:`TheoreticalReceptiveField.find_region`, inside the image), the canvas is
    R_h × R_w = the largest height and width of these regions, and each cut-out is copied
    from its region's corner. ``alignment="map"`` scores a unit by the mean over its own
    region.

    **Coordinates.** Upsampling maps are already in pixels. The occlusion grid is put into
    pixels by :func:`occlusion_pixel_map` (grid row r is centred on pixel
    ``r*s_h + (h - 1)/2``; pixels between centres are interpolated linearly), for any image
    size, window and stride (DNNBrain mixed the 107 × 107 grid with 224-pixel boxes).

    **Size.** With ``lo``/``hi`` the minimum/maximum of the averaged map over covered
    pixels, the region is the 8-connected component around the peak of the pixels where
    ``map - lo >= size_threshold * (hi - lo)``; ``size`` is its height and width. The
    default 0.5 is the full width at half maximum, the usual width of a peaked response,
    independent of the map's scale and offset (activation maps are not zero-based).
    ``size <= (R_h, R_w)`` always; the empirical field is usually much smaller than the
    theoretical one (Zhou et al. 2015; Luo et al. 2016). A flat map gives size (0, 0).

    Batches: ``inputs`` may be one batch or an iterable of batches (a DataLoader yielding
    tensors or ``(images, labels)`` pairs); images are accumulated one by one in float64,
    so a set split into batches gives the same result as one batch. Each batch goes
    through the engine as a whole (its own batching: ``perturbations_per_eval``).

    References
    ----------
    .. [1] Zhou, B., Khosla, A., Lapedriza, A., Oliva, A., Torralba, A. (2015). Object
       detectors emerge in deep scene CNNs. ICLR.
    .. [2] Luo, W., Li, Y., Urtasun, R., Zemel, R. (2016). Understanding the effective
       receptive field in deep convolutional neural networks. NeurIPS.

    Examples
    --------
    >>> from dnnbrain_captum import UpsamplingActivationMapping, digits_cnn, digits_images
    >>> images, _ = digits_images(n=16)
    >>> engine = UpsamplingActivationMapping(digits_cnn(), "conv3")
    >>> result = EmpiricalReceptiveField(engine).attribute(images, target=5)
    >>> tuple(result.map.shape)          # the theoretical field of conv3: 18 x 18
    (18, 18)
    >>> bool((result.size <= 18).all())
    True
    """

    def __init__(self, engine: UpsamplingActivationMapping | OccluderDiscrepancyMapping) -> None:
        if not isinstance(engine, (UpsamplingActivationMapping, OccluderDiscrepancyMapping)):
            raise TypeError(
                "engine must be an UpsamplingActivationMapping or OccluderDiscrepancyMapping "
                f"instance, got {type(engine).__name__}"
            )
        model = engine.forward_func
        layer = getattr(engine, "layer", None)
        if not isinstance(model, nn.Module):
            raise TypeError(
                "the engine's forward function must be an nn.Module (the theoretical "
                f"receptive field analyses its modules), got {type(model).__name__}"
            )
        if not isinstance(layer, nn.Module):
            raise ValueError(
                "the engine has no layer (layer=None explains the model output); "
                "build it on a layer with a spatial output"
            )
        self.engine = engine
        self.model = model
        self.layer = layer
        self._path = layer_path(model, layer)
        self._theory: dict[tuple[int, int, int], LayerReceptiveField] = {}

    def theoretical(self, input_size: tuple[int, int, int]) -> LayerReceptiveField:
        """The layer's theoretical receptive field for images of ``input_size`` (C, H, W)."""
        key = tuple(int(v) for v in input_size)
        if key not in self._theory:
            analysis = TheoreticalReceptiveField(self.model, key)  # type: ignore[arg-type]
            entry = analysis.compute(until=self.layer).entry(self._path)
            if not entry.spatial:
                raise ValueError(
                    f"layer {self._path!r} has no spatial output; an empirical "
                    "receptive field needs units on a grid"
                )
            if entry.size is None and (entry._rows is None or entry._cols is None):
                raise ValueError(
                    f"layer {self._path!r} has no per-unit receptive fields at input size {key}"
                )
            self._theory[key] = entry  # type: ignore[index]
        return self._theory[key]  # type: ignore[index]

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | Iterable[Any],
        target: Any,
        additional_forward_args: Any = None,
        alignment: str = "activation",
        size_threshold: float = 0.5,
        show_progress: bool = False,
        **engine_kwargs: Any,
    ) -> EmpiricalRF:
        """Mean aligned map and size estimate of the layer's empirical receptive field.

        Parameters
        ----------
        inputs : Tensor of shape (N, C, H, W) or iterable of such tensors
            Images (one batch), or batches (tensors or ``(images, ...)`` tuples).
        target : int, list of int, Tensor, tuple (c, i, j) or callable
            The engine's target (0-based channel; per-example lists only for one batch).
            A unit tuple fixes the unit (occlusion engine); a callable needs
            ``alignment="map"``.
        additional_forward_args : Any, optional
            Further positional arguments of the model (one batch only).
        alignment : {"activation", "map"}
            How each image's best unit is chosen (see Notes of the class).
        size_threshold : float in (0, 1)
            Fraction of the averaged map's range that defines the measured region (0.5: full
            width at half maximum).
        show_progress : bool
            A progress bar over batches.
        **engine_kwargs
            Passed to the engine's ``attribute``: ``interpolate_mode``, ``threshold`` for
            upsampling; ``sliding_window_shapes``, ``strides``, ``baselines``,
            ``reduction``, ``perturbations_per_eval`` for occlusion.

        Returns
        -------
        EmpiricalRF
            ``(map, size)``: Tensor (R_h, R_w) and Tensor (2,) of int64.
        """
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
        if (
            isinstance(size_threshold, bool)
            or not isinstance(size_threshold, (int, float))
            or not 0.0 < float(size_threshold) < 1.0
        ):
            raise ValueError(f"size_threshold must be a number in (0, 1), got {size_threshold!r}")
        if callable(target) and not isinstance(target, Tensor) and alignment == "activation":
            raise ValueError(
                "a callable target has no channel to locate the best unit in; use alignment='map'"
            )
        one_batch = isinstance(inputs, Tensor)
        per_example = isinstance(target, list) or (isinstance(target, Tensor) and target.dim() > 0)
        if not one_batch and (additional_forward_args is not None or per_example):
            raise ValueError(
                "with an iterable of batches, target must be one int, unit tuple or "
                "callable for every image, and additional_forward_args is not "
                "supported"
            )
        total: Tensor | None = None
        count: Tensor | None = None
        entry: LayerReceptiveField | None = None
        dtype = device = None
        for x in tqdm(_batches(inputs), disable=not show_progress, desc="empirical RF"):
            layer_entry = self.theoretical(tuple(x.shape[1:]))  # type: ignore[arg-type]
            field_size = _field_size(layer_entry)
            if entry is not None and field_size != _field_size(entry):
                raise ValueError(
                    f"the batches give different theoretical fields ({_field_size(entry)} and "
                    f"{field_size}): use one image size"
                )
            entry, dtype, device = layer_entry, x.dtype, x.device
            maps = self._pixel_maps(x, target, additional_forward_args, engine_kwargs)
            units = self._best_units(x, target, maps, entry, alignment, additional_forward_args)
            if total is None:
                total = torch.zeros(field_size, dtype=torch.float64, device=device)
                count = torch.zeros(field_size, dtype=torch.float64, device=device)
            assert count is not None
            for n in range(x.shape[0]):
                _accumulate(total, count, maps[n].to(torch.float64), units[n], entry)
        if total is None or count is None or entry is None:
            raise ValueError("inputs holds no images")
        covered = count > 0
        mean = torch.where(covered, total / count.clamp(min=1), torch.zeros_like(total))
        size = _extent(mean, covered, float(size_threshold))
        return EmpiricalRF(mean.to(dtype), size.to(device))

    def _pixel_maps(
        self, x: Tensor, target: Any, additional_forward_args: Any, engine_kwargs: dict[str, Any]
    ) -> Tensor:
        engine = self.engine
        grid = engine.attribute(
            x, target=target, additional_forward_args=additional_forward_args, **engine_kwargs
        )
        if isinstance(engine, UpsamplingActivationMapping):
            return grid
        defaults = inspect.signature(type(engine).attribute).parameters
        window = pair(
            engine_kwargs.get("sliding_window_shapes", defaults["sliding_window_shapes"].default),
            "sliding_window_shapes",
        )
        stride = pair(engine_kwargs.get("strides", defaults["strides"].default), "strides")
        return occlusion_pixel_map(grid, (x.shape[-2], x.shape[-1]), window, stride)

    def _best_units(
        self,
        x: Tensor,
        target: Any,
        maps: Tensor,
        entry: LayerReceptiveField,
        alignment: str,
        additional_forward_args: Any,
    ) -> list[tuple[int, int]]:
        assert entry.output_size is not None
        n_h, n_w = entry.output_size
        if isinstance(target, tuple):
            if len(target) != 3:
                raise ValueError(f"a unit target must be (channel, row, col), got {target!r}")
            i, j = int(target[1]), int(target[2])
            if not (0 <= i < n_h and 0 <= j < n_w):
                raise ValueError(
                    f"unit target {target} is outside the {n_h}x{n_w} output of "
                    f"layer {self._path!r}"
                )
            return [(i, j)] * x.shape[0]
        if alignment == "map":
            scores = _box_scores(maps, entry)
        else:
            with torch.no_grad():
                output = layer_output(
                    self.model,
                    self.layer,
                    (x,),
                    additional_forward_args,
                    getattr(self.engine, "reshape_transform", None),
                )
            if not isinstance(output, Tensor):
                raise ValueError(f"layer {self._path!r} returns several tensors")
            scores = channel_maps(output, target)
            if tuple(scores.shape[1:]) != (n_h, n_w):
                raise ValueError(
                    f"layer {self._path!r} gives maps of shape {tuple(scores.shape[1:])}, not the "
                    f"{n_h}x{n_w} grid of units the theoretical analysis found"
                )
        flat = scores.reshape(scores.shape[0], -1).argmax(1).tolist()
        return [(k // n_w, k % n_w) for k in flat]


def _batches(inputs: Tensor | Iterable[Any]) -> Iterator[Tensor]:
    if isinstance(inputs, Tensor):
        yield check_image_batch(inputs)
        return
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        raise TypeError(
            "inputs must be an image tensor (N, C, H, W) or an iterable of them, "
            f"got {type(inputs).__name__}"
        )
    for k, item in enumerate(inputs):
        if isinstance(item, (tuple, list)) and item:
            item = item[0]
        yield check_image_batch(item, name=f"batch {k} of inputs")


def _spans(entry: LayerReceptiveField, axis: int) -> tuple[Tensor, Tensor]:
    """First and end pixel (int64, shape (n,)) of every unit's field along ``axis``.

    Evenly spaced fields: the full theoretical box ``[i*j - P, i*j - P + R)`` (it may reach
    past the image). Other layers (windowed attention, upsampling, ...): each unit's exact
    region, inside the image (an empty one as ``[0, 0)``).
    """
    assert entry.output_size is not None
    if entry.size is not None:
        assert entry.stride is not None and entry.padding is not None
        start = torch.arange(entry.output_size[axis]) * entry.stride[axis] - entry.padding[axis]
        return start, start + entry.size[axis]
    rows_or_cols = entry._rows if axis == 0 else entry._cols
    assert rows_or_cols is not None
    lo, hi = (t.to(torch.long).cpu() for t in rows_or_cols)
    empty = hi <= lo
    return lo.masked_fill(empty, 0), hi.masked_fill(empty, 0)


def _field_size(entry: LayerReceptiveField) -> tuple[int, int]:
    """``(R_h, R_w)``: the field size, or the largest field extent when fields differ."""
    if entry.size is not None:
        return entry.size
    lo_h, hi_h = _spans(entry, 0)
    lo_w, hi_w = _spans(entry, 1)
    return int((hi_h - lo_h).max()), int((hi_w - lo_w).max())


def _box(unit: tuple[int, int], entry: LayerReceptiveField, axis: int) -> int:
    return int(_spans(entry, axis)[0][unit[axis]])


def _accumulate(
    total: Tensor,
    count: Tensor,
    pixel_map: Tensor,
    unit: tuple[int, int],
    entry: LayerReceptiveField,
) -> None:
    spans = []
    for axis in range(2):
        start, extent = _box(unit, entry, axis), pixel_map.shape[axis]
        end = int(_spans(entry, axis)[1][unit[axis]])
        lo, hi = max(start, 0), min(end, extent)
        if hi <= lo:
            return
        spans.append((lo, hi, lo - start, hi - start))
    (y0, y1, r0, r1), (x0, x1, c0, c1) = spans
    total[r0:r1, c0:c1] += pixel_map[y0:y1, x0:x1]
    count[r0:r1, c0:c1] += 1


def _box_scores(maps: Tensor, entry: LayerReceptiveField) -> Tensor:
    """Mean of ``maps - min`` over each unit's full theoretical box (outside counts as 0);
    over its exact region for fields that are not evenly spaced."""
    shifted = (maps - maps.amin(dim=(1, 2), keepdim=True)).to(torch.float64)
    integral = F.pad(shifted.cumsum(1).cumsum(2), (1, 0, 1, 0))
    bounds = []
    for axis in range(2):
        start, end = (t.to(maps.device) for t in _spans(entry, axis))
        extent = maps.shape[1 + axis]
        bounds.append((start.clamp(0, extent), end.clamp(0, extent)))
    (r0, r1), (c0, c1) = bounds
    sums = (
        integral[:, r1][:, :, c1]
        - integral[:, r0][:, :, c1]
        - integral[:, r1][:, :, c0]
        + integral[:, r0][:, :, c0]
    )
    if entry.size is not None:
        return sums / float(entry.size[0] * entry.size[1])
    area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    return sums / area.clamp(min=1).to(sums.dtype)


def _extent(mean: Tensor, covered: Tensor, threshold: float) -> Tensor:
    values = mean[covered]
    lo, hi = values.min(), values.max()
    if not bool(hi > lo):
        return torch.zeros(2, dtype=torch.long)
    inside = covered & (mean - lo >= threshold * (hi - lo))
    peak = int(torch.where(covered, mean, torch.full_like(mean, -torch.inf)).argmax())
    region = torch.zeros_like(inside)
    region.view(-1)[peak] = True
    while True:
        grown = F.max_pool2d(region[None, None].to(mean.dtype), 3, 1, 1)[0, 0].bool() & inside
        if bool((grown == region).all()):
            break
        region = grown
    rows = torch.nonzero(region.any(1)).flatten()
    cols = torch.nonzero(region.any(0)).flatten()
    return torch.stack([rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1]).long().cpu()
