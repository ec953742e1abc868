"""Theoretical receptive fields of every layer of any CNN, from its actual computation graph."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from dnnbrain_captum._utils.layers import LayerSpec, layer_path, resolve_layer
from dnnbrain_captum.models.aliases import dnnbrain_aliases
from dnnbrain_captum.receptive_field._analysis import trace_model
from dnnbrain_captum.receptive_field._geometry import (
    Flat,
    Spatial,
    Tokens,
    UnsupportedOperationError,
    entry_values,
)

__all__ = [
    "LayerReceptiveField",
    "ReceptiveFieldTable",
    "TheoreticalReceptiveField",
    "UnsupportedOperationError",
]

Box = list[tuple[int, int]]


@dataclass(frozen=True)
class LayerReceptiveField:
    """The receptive field of one layer's units (one row of the table).

    Attributes
    ----------
    name : str
        Module path (``"features.10"``); a module called several times in one forward pass
        has one row per call, ``"layer1.0.relu"`` for the first and ``"layer1.0.relu:1"``,
        ``"layer1.0.relu:2"`` … for the next ones.
    module_type : str
        Class name of the module.
    spatial : bool
        Whether the output keeps an H × W grid of units. Flattened outputs, ``Linear``
        layers over flattened maps and global reductions without ``keepdim`` are not spatial.
    size : tuple of int or None
        Receptive-field size (rh, rw) in pixels (Araujo et al. 2019), counting padding. For a
        non-spatial layer: the extent of the pixel box seen by the union of its units.
    stride : tuple of int or None
        Jump (jh, jw): pixel distance between the fields of neighbouring units.
    padding : tuple of int or None
        Effective padding (Ph, Pw): unit (i, j) sees rows ``[i*jh - Ph, i*jh - Ph + rh)``.
    output_size : tuple of int or None
        (H, W) of the layer's output (None when not spatial).
    box : list of (int, int)
        ``[(h0, h1), (w0, w1)]``: pixels seen by at least one unit (the union of all fields).
    tokens : (int, int) or None
        For a token sequence (a vision transformer's ``(N, 1 + H*W, D)``): the token axis
        and the number of extra tokens before the grid (unit (i, j) is token
        ``extra + i * W + j``). None for maps with separate H and W axes.

    ``size``, ``stride`` and ``padding`` are None for a spatial layer whose fields are not
    evenly spaced (adaptive pooling with uneven windows, merged paths with different jumps);
    :meth:`region` still gives each unit's exact box.
    """

    name: str
    module_type: str
    spatial: bool
    size: tuple[int, int] | None
    stride: tuple[int, int] | None
    padding: tuple[int, int] | None
    output_size: tuple[int, int] | None
    box: Box
    tokens: tuple[int, int] | None = None
    _rows: tuple[Tensor, Tensor] | None = field(default=None, repr=False, compare=False)
    _cols: tuple[Tensor, Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def start(self) -> tuple[float, float] | None:
        """Centre of unit (0, 0)'s field in DNNBrain's convention (pixel k spans [k, k+1)).

        ``start = r / 2 - P``; DNNBrain's AlexNet conv1 gives 3.5.
        """
        if self.size is None or self.padding is None:
            return None
        return (self.size[0] / 2 - self.padding[0], self.size[1] / 2 - self.padding[1])

    def region(self, unit: Sequence[int], *, label: str | None = None) -> Box:
        """The pixel box ``[(h0, h1), (w0, w1)]`` (half-open, clipped) of unit (i, j).

        ``label`` is the layer name to use in error messages (default: the entry's name).

        Raises
        ------
        ValueError
            If the layer is not spatial or the unit lies outside its output.
        """
        name = self.name if label in (None, self.name) else f"{label} ({self.name})"
        if not self.spatial or self._rows is None or self._cols is None:
            (h0, h1), (w0, w1) = self.box
            raise ValueError(
                f"layer {name!r} ({self.module_type}) has no spatial grid of units (its "
                f"output was flattened or globally pooled); together its units see rows "
                f"[{h0}, {h1}) and columns [{w0}, {w1}). find_region needs a layer with a "
                "spatial output; use the table entry's `box` for the whole layer"
            )
        if (
            not isinstance(unit, (tuple, list))
            or len(unit) != 2
            or any(isinstance(u, bool) or not isinstance(u, int) for u in unit)
        ):
            raise TypeError(f"unit must be a (row, column) pair of ints, got {unit!r}")
        assert self.output_size is not None
        (n_h, n_w), (i, j) = self.output_size, unit
        if not (0 <= i < n_h and 0 <= j < n_w):
            raise ValueError(
                f"unit {tuple(unit)} is outside the {n_h}x{n_w} output of layer {name!r}: "
                f"rows must be in [0, {n_h - 1}] and columns in [0, {n_w - 1}]"
            )
        return [_interval(self._rows, i), _interval(self._cols, j)]


def _interval(axis: tuple[Tensor, Tensor], index: int) -> tuple[int, int]:
    lo, hi = int(axis[0][index]), int(axis[1][index])
    return (lo, hi) if lo < hi else (0, 0)


def _fmt(pair: tuple[int, int] | None) -> str:
    return "-" if pair is None else f"{pair[0]}x{pair[1]}"


class ReceptiveFieldTable(Mapping[str, LayerReceptiveField]):
    """Receptive fields of every layer, keyed by module path and by DNNBrain alias.

    Iteration yields the module paths in the order the modules start running (containers
    before their children), then the aliases. ``str(table)`` is a readable text table.
    """

    def __init__(
        self,
        entries: dict[str, LayerReceptiveField],
        aliases: dict[str, str],
        input_size: tuple[int, int, int],
        model_name: str,
    ) -> None:
        self._entries = entries
        self._aliases = {a: p for a, p in aliases.items() if p in entries}
        self.input_size = input_size
        self.model_name = model_name

    def __getitem__(self, key: str) -> LayerReceptiveField:
        if key in self._entries:
            return self._entries[key]
        if key in self._aliases:
            return self._entries[self._aliases[key]]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        yield from self._entries
        yield from self._aliases

    def __len__(self) -> int:
        return len(self._entries) + len(self._aliases)

    def aliases(self) -> dict[str, str]:
        """DNNBrain alias → module path, for the aliases in the table."""
        return dict(self._aliases)

    def entry(self, layer: str) -> LayerReceptiveField:
        """The row of ``layer`` (path, alias or ``path:k`` for later calls).

        Raises
        ------
        ValueError
            For an unknown name; the message lists the closest names.
        """
        if not isinstance(layer, str):
            raise TypeError(f"layer must be a string here, got {type(layer).__name__}")
        try:
            return self[layer]
        except KeyError:
            close = difflib.get_close_matches(layer, list(self), n=5, cutoff=0.5)
            hint = (
                ", ".join(repr(c) for c in close)
                if close
                else ", ".join(repr(c) for c in list(self._entries)[:5])
            )
            raise ValueError(
                f"unknown layer {layer!r} in the receptive-field table of {self.model_name}; "
                f"close names: {hint}"
            ) from None

    def find_region(self, layer: str, unit: Sequence[int]) -> Box:
        """Pixel box ``[(h0, h1), (w0, w1)]`` of unit (row, col) of ``layer``; see
        :meth:`TheoreticalReceptiveField.find_region`."""
        return self.entry(layer).region(unit, label=layer)

    def to_text(self) -> str:
        """The table as aligned text: layer, alias, module, output, size, stride, padding."""
        by_path = {p: a for a, p in self._aliases.items()}
        header = ("layer", "alias", "module", "output", "size", "stride", "padding")
        rows = [header]
        for name, e in self._entries.items():
            if e.spatial:
                cells = (_fmt(e.output_size), _fmt(e.size), _fmt(e.stride), _fmt(e.padding))
            else:
                cells = ("flat", _fmt(e.size), "-", "-")
            rows.append((name, by_path.get(name, ""), e.module_type, *cells))
        widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
        lines = [f"receptive fields of {self.model_name} for input {self.input_size}"]
        for r in rows:
            lines.append(
                "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return (
            f"ReceptiveFieldTable({self.model_name}, input_size={self.input_size}, "
            f"{len(self._entries)} layers)"
        )


class TheoreticalReceptiveField:
    """Theoretical receptive field of every layer of a CNN or vision transformer.

    The model's forward pass is run once on a shape-only (``meta``) tensor while every torch
    operation is intercepted, so the analysis follows the real computation graph: branches
    and merges (ResNet additions, Inception/GoogLeNet/DenseNet concatenations), functional
    operations written in ``forward``, dilation, ``ceil_mode``, asymmetric kernels, strides
    and padding, grouped and depthwise convolutions, explicit ``F.pad`` (zero, reflect,
    replicate), crops by slicing, adaptive and global pooling, ``Linear`` layers, flatten,
    reshapes and permutes (channel-last blocks such as ConvNeXt's and Swin's), token
    sequences (a ViT's patch grid flattened after its class token), attention (ViT's global
    ``nn.MultiheadAttention``, Swin's windowed and shifted-window attention, MaxViT's block
    and grid attention), transposed convolutions, ``F.interpolate``/``nn.Upsample``,
    ``pixel_shuffle``/``pixel_unshuffle``, ``torch.roll``/``flip``, and pass-through
    operations (activations, normalisation, dropout). No arithmetic is done and the model's
    parameters are never read or changed. Speed: the ResNet-50 table at 224 x 224 takes
    0.04-0.06 s on one CPU core (measured on a loaded 2-core VM and a 16-core server; one
    real forward pass of one image takes 0.2 s there); DenseNet-121 0.18 s
    (``benchmarks/bench_receptive_field.py``).

    Parameters
    ----------
    model : nn.Module
        The network. Its mode, parameters and buffers are left untouched; hooks are
        removed afterwards (also after an error).
    input_size : sequence of 3 ints
        (C, H, W) of one input image; results depend on H and W (output sizes, borders).

    Notes
    -----
    Conventions (DESIGN.md §5, Araujo et al. 2019): for each layer, ``size`` (rh, rw),
    ``stride`` (jump jh, jw) and effective ``padding`` (Ph, Pw) say that unit (i, j) sees the
    input rows ``[i*jh - Ph, i*jh - Ph + rh)`` and columns ``[j*jw - Pw, j*jw - Pw + rw)``,
    counted in pixels with padding included, for any of the layer's channels. DNNBrain's
    ``start`` (centre of unit 0, pixel k spanning [k, k+1)) is ``r/2 - P`` (``entry.start``).

    * **Multi-path layers** report the union (hull) of all paths.
    * :meth:`find_region` gives the **exact** box of the pixels that can influence a unit:
      the formula box clipped to the image, except where a padded (non-existent) unit would
      extend it — at the bottom/right border of layers whose strided windows dropped the
      last pixels, or after reflect padding — where it is the smaller, exact box. This is
      what the gradient-support probe of the test suite measures (linearised copy, positive
      weights: the non-zero support of a unit's input gradient has exactly this bounding
      box; with dilation, or strides larger than kernels, the support can have holes).
    * **Non-spatial layers** (flattened, global pooling without ``keepdim``, ``Linear``
      after a flatten) have ``spatial=False``; their ``size``/``box`` give what the union of
      their units sees (normally the whole input) and :meth:`find_region` raises
      ``ValueError`` for them. A global pooling with ``keepdim`` (``AdaptiveAvgPool2d(1)``)
      is spatial with one unit that sees the whole image.
    * **By convention**, operations that rescale units by statistics of whole maps do not
      widen the field: a multiplication by a broadcast (N, C, 1, 1) gate
      (squeeze-and-excitation, MobileNetV3, EfficientNet, RegNet) and normalisation layers
      (batch/instance/group/layer norm). Otherwise every unit after the first SE block
      would see the whole image.
    * A module called several times in one pass (ResNet blocks reuse one ``relu``) has one
      row per call: ``"layer1.0.relu"`` is the first call (the output the package's other
      classes use for that layer), ``"layer1.0.relu:1"`` the second, and so on.
    * **Resampling** (transposed convolutions, interpolation in every mode, pixel
      shuffles) gives every output unit the exact set of input units it reads (for
      interpolation, the non-zero weights of PyTorch's own operator); such layers have
      exact regions but no affine ``size``/``stride``/``padding`` (None).
    * **Attention** (Vaswani et al. 2017; Liu et al. 2021; Tu et al. 2022): a unit after an
      attention module sees the union of what the units it attends to saw. Global attention
      (``nn.MultiheadAttention`` without masks): the whole image, with the affine form
      ``stride == (0, 0)``. Swin: the unit's window; after a shifted window only the part of
      it in the same region of the rolled map (torchvision masks the rest with a logit of
      -100, a weight below e**-100 that is counted as zero). MaxViT: the block's window, or
      the units sharing its position in the grid's cells. Token layers (``entry.tokens``)
      report the patch grid; the class token is not a unit.
    * An operation without a rule (``grid_sample``, ``unfold``, in-place assignment into a
      map, attention with masks) raises :class:`UnsupportedOperationError` (a
      ``NotImplementedError``) naming the operation and the module that called it; so does
      a forward pass that reads tensor values (value-dependent control flow cannot run on
      shape-only tensors). An ``input_size`` whose channel count the first convolution
      does not accept raises ``ValueError`` naming both.

    References
    ----------
    .. [1] Araujo, A., Norris, W. and Sim, J. (2019). Computing receptive fields of
       convolutional neural networks. Distill. https://doi.org/10.23915/distill.00021

    Examples
    --------
    >>> from torchvision.models import alexnet
    >>> rf = TheoreticalReceptiveField(alexnet(), input_size=(3, 224, 224))
    >>> table = rf.compute()
    >>> table["features.10"].size, table["conv5"].stride, table["conv5"].output_size
    ((163, 163), (16, 16), (13, 13))
    >>> rf.find_region("conv5", (6, 6))
    [(30, 193), (30, 193)]
    >>> table["fc1"].spatial
    False
    """

    def __init__(self, model: nn.Module, input_size: Sequence[int]) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if (
            not isinstance(input_size, (tuple, list))
            or len(input_size) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) for v in input_size)
        ):
            raise TypeError(f"input_size must be a (C, H, W) tuple of 3 ints, got {input_size!r}")
        if any(v < 1 for v in input_size):
            raise ValueError(f"input_size={tuple(input_size)!r}: C, H and W must be >= 1")
        self.model = model
        self.input_size: tuple[int, int, int] = (
            int(input_size[0]),
            int(input_size[1]),
            int(input_size[2]),
        )
        self._table: ReceptiveFieldTable | None = None

    def compute(self, until: LayerSpec = None) -> ReceptiveFieldTable:
        """Analyse the model and return the table of every layer's receptive field.

        Parameters
        ----------
        until : nn.Module or str, optional
            Stop the analysis once this layer has run (first call): the table then holds the
            layers that ran before it and the layer itself. Useful for a model whose later
            layers accept only one input size (a ``Linear`` after a flatten).

        Returns
        -------
        ReceptiveFieldTable
            Mapping from module path (and DNNBrain alias) to :class:`LayerReceptiveField`.

        Raises
        ------
        UnsupportedOperationError
            For an operation whose effect on the spatial grid the analysis cannot follow,
            or a forward pass that reads tensor values; the message names the module.
        ValueError
            When ``input_size`` has a channel count the first convolution does not accept.
        Exception
            Whatever else the forward pass raises on shape-only tensors (a shape mismatch at
            this input size); a note names the module where it happened.
        """
        stop = None if until is None else resolve_layer(self.model, until)
        table = _analyse(self.model, self.input_size, stop)
        if stop is None:
            self._table = table
        return table

    @property
    def table(self) -> ReceptiveFieldTable:
        """The table, computed on first use (see :meth:`compute`)."""
        if self._table is None:
            self.compute()
        assert self._table is not None
        return self._table

    def __getitem__(self, layer: LayerSpec) -> LayerReceptiveField:
        return self.table.entry(self._key(layer))

    def find_region(self, layer: LayerSpec, unit: Sequence[int]) -> Box:
        """The pixels unit (row, col) of ``layer`` can see, clipped to the image.

        Parameters
        ----------
        layer : nn.Module or str
            A module of the model, its dotted path, a DNNBrain alias (``"conv5"``) or a
            table key ``"path:k"`` for a later call of a reused module.
        unit : (int, int)
            0-based (row, column) of the unit in the layer's output.

        Returns
        -------
        list of (int, int)
            ``[(h0, h1), (w0, w1)]``, half-open pixel intervals (rows h0 … h1 - 1).

        Raises
        ------
        ValueError
            For an unknown layer, a unit outside the layer's output, or a layer without a
            spatial output (flattened, ``Linear``, global pooling without ``keepdim``).
        """
        label = layer if isinstance(layer, str) else None
        return self[layer].region(unit, label=label)

    def _key(self, layer: LayerSpec) -> str:
        if isinstance(layer, str) and layer in self.table:
            return layer
        if layer is None:
            raise ValueError("layer=None (the model output) has no spatial units; name a layer")
        module = resolve_layer(self.model, layer)
        assert module is not None
        path = layer_path(self.model, module)
        if path not in self.table:
            raise ValueError(
                f"layer {path!r} ({type(module).__name__}) did not run in the forward pass of "
                f"{type(self.model).__name__} at input size {self.input_size}"
            )
        return path

    def __repr__(self) -> str:
        return (
            f"TheoreticalReceptiveField({type(self.model).__name__}, input_size={self.input_size})"
        )


def _analyse(
    model: nn.Module, input_size: tuple[int, int, int], stop: nn.Module | None = None
) -> ReceptiveFieldTable:
    trace = trace_model(model, input_size, stop)
    entries: dict[str, LayerReceptiveField] = {}
    rows = []
    for path, records in trace.calls.items():
        if not path:
            continue
        for k, (start, type_name, state) in enumerate(records):
            if not isinstance(state, (Spatial, Tokens, Flat)):
                continue
            rows.append((start, f"{path}:{k}" if k else path, type_name, state))
    for _, name, type_name, state in sorted(rows, key=lambda r: r[0]):
        entries[name] = _entry(name, type_name, state)
    return ReceptiveFieldTable(entries, dnnbrain_aliases(model), input_size, type(model).__name__)


def _entry(name: str, type_name: str, state: Spatial | Tokens | Flat) -> LayerReceptiveField:
    if isinstance(state, Flat):
        (h0, h1), (w0, w1) = state.box
        return LayerReceptiveField(
            name,
            type_name,
            False,
            (h1 - h0, w1 - w0),
            None,
            None,
            None,
            [state.box[0], state.box[1]],
        )
    size, stride, padding = entry_values(state)
    rows, cols = state.axes
    box = state.grid_box() if isinstance(state, Tokens) else state.box()
    tokens = (state.dim, len(state.prefix)) if isinstance(state, Tokens) else None
    return LayerReceptiveField(
        name,
        type_name,
        True,
        size,
        stride,
        padding,
        (rows.n, cols.n),
        [box[0], box[1]],
        tokens=tokens,
        _rows=(rows.lo, rows.hi),
        _cols=(cols.lo, cols.hi),
    )
