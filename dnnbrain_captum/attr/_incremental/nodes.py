"""Operations of the incremental engine: spatial footprint, clean and patch computation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnnbrain_captum._spatial import IDENTITY, Footprint, Window, window_of_module

__all__ = ["IDENTITY", "Channels", "Footprint", "IncrementalUnsupported"]

Channels = list[int] | None  # None: every channel


class IncrementalUnsupported(Exception):
    """The incremental path cannot evaluate this model/target; the message says why."""


# --------------------------------------------------------------------------------------------
# Graph nodes
# --------------------------------------------------------------------------------------------


class _Node:
    """One operation on the path to the target layer."""

    name: str = ""
    inputs: tuple[int, ...] = ()
    footprint: tuple[Footprint, Footprint] | None = None  # sliding-window ops only
    fill: float = 0.0  # value of padding positions for sliding-window ops
    merge: bool = False  # several inputs combined element-wise / concatenated

    def clean(self, values: Sequence[Tensor]) -> Tensor:
        """The full output from full inputs (all channels)."""
        raise NotImplementedError

    def input_channels(self, channels: Channels, shapes: Sequence[torch.Size]) -> list[Channels]:
        """Channels of each input needed to compute ``channels`` of the output."""
        return [channels for _ in self.inputs]

    def patch(self, regions: Sequence[Tensor], channels: Channels) -> Tensor:
        """The output patch from input regions (selected channels only)."""
        return self.clean(regions)

    def macs(self, channels: Channels, out_shape: torch.Size, area: int) -> int:
        """Multiply-adds for ``area`` output positions of ``channels``."""
        return 0


class _Input(_Node):
    def clean(self, values: Sequence[Tensor]) -> Tensor:
        raise AssertionError("the input has no computation")  # pragma: no cover


class _Conv(_Node):
    def __init__(self, module: nn.Conv2d) -> None:
        if module.padding_mode != "zeros":
            raise IncrementalUnsupported(
                f"convolution with padding_mode={module.padding_mode!r} is not supported"
            )
        self.module = module
        self.folded: tuple[Tensor, Tensor | None] | None = None
        self.bn: nn.BatchNorm2d | None = None
        # Kernels per channel selection, channels-last in memory like the patches (else every
        # call copies the weights into that layout); cleared by :meth:`refresh`.
        self._kernels: dict[tuple[int, ...] | None, tuple[Tensor, Tensor | None, int]] = {}
        self._transposed: dict[tuple[int, ...] | None, Tensor] = {}
        window = window_of_module(module)
        assert window is not None
        self.footprint = window.axes

    def clean(self, values: Sequence[Tensor]) -> Tensor:
        if self.folded is None:
            return self.module.forward(values[0])
        m = self.module
        return F.conv2d(values[0], *self.folded, m.stride, m.padding, m.dilation, m.groups)

    def fold(self, bn: nn.BatchNorm2d) -> None:
        """Compute ``bn(conv(x))`` as one convolution (eval batch norm: an affine map)."""
        self.bn = bn
        self.refresh()

    def refresh(self) -> None:
        """Recompute the folded kernel from the current weights and statistics."""
        self._kernels.clear()
        self._transposed.clear()
        bn = self.bn
        if bn is None:
            return
        assert bn.running_var is not None and bn.running_mean is not None
        scale = torch.rsqrt(bn.running_var + bn.eps)
        shift = -bn.running_mean * scale
        if bn.weight is not None:
            scale, shift = scale * bn.weight, shift * bn.weight
        if bn.bias is not None:
            shift = shift + bn.bias
        bias = self.module.bias
        weight = self.module.weight * scale.view(-1, 1, 1, 1)
        self.folded = (weight, shift if bias is None else bias * scale + shift)

    def input_channels(self, channels: Channels, shapes: Sequence[torch.Size]) -> list[Channels]:
        groups = self.module.groups
        if channels is None or groups == 1:
            return [None]
        per_out = self.module.out_channels // groups
        per_in = self.module.in_channels // groups
        needed = sorted(
            {g * per_in + t for g in {c // per_out for c in channels} for t in range(per_in)}
        )
        return [needed]

    def kernel(self, channels: Channels) -> tuple[Tensor, Tensor | None, int]:
        """(weight, bias, groups) computing ``channels`` of the output, cached.

        The weight is channels-last in memory. For a grouped convolution restricted to some
        channels, each selected channel becomes its own group (see :meth:`patch`).
        """
        key = None if channels is None else tuple(channels)
        if key not in self._kernels:
            module = self.module
            weight, bias = self.folded or (module.weight, module.bias)
            groups = module.groups
            if channels is not None:
                index = torch.tensor(channels, dtype=torch.long, device=weight.device)
                weight = weight.index_select(0, index)
                bias = None if bias is None else bias.index_select(0, index)
                groups = len(channels) if groups > 1 else 1
            weight = weight.detach().contiguous(memory_format=torch.channels_last)
            self._kernels[key] = (weight, None if bias is None else bias.detach(), groups)
        return self._kernels[key]

    def transposed(self, channels: Channels) -> Tensor:
        """The flipped kernel (C_in, C_out, kh, kw) of :meth:`kernel` for a transposed conv."""
        key = None if channels is None else tuple(channels)
        if key not in self._transposed:
            weight = self.kernel(channels)[0]
            flipped = weight.flip(-1, -2).transpose(0, 1)
            self._transposed[key] = flipped.contiguous(memory_format=torch.channels_last)
        return self._transposed[key]

    def patch(self, regions: Sequence[Tensor], channels: Channels) -> Tensor:
        module = self.module
        weight, bias, groups = self.kernel(channels)
        region = regions[0]
        if channels is not None and module.groups > 1:
            # One group per selected channel, fed with its own group's input channels.
            needed = self.input_channels(channels, ())[0]
            assert needed is not None
            position = {c: k for k, c in enumerate(needed)}
            per_out = module.out_channels // module.groups
            per_in = module.in_channels // module.groups
            expand = [
                position[(c // per_out) * per_in + t] for c in channels for t in range(per_in)
            ]
            region = region.index_select(
                1, torch.tensor(expand, dtype=torch.long, device=region.device)
            )
        return F.conv2d(region, weight, bias, module.stride, 0, module.dilation, groups)

    def macs(self, channels: Channels, out_shape: torch.Size, area: int) -> int:
        n_out = self.module.out_channels if channels is None else len(channels)
        per_in = self.module.in_channels // self.module.groups
        k = self.module.kernel_size
        return n_out * per_in * k[0] * k[1] * area


class _Window(_Node):
    """A sliding-window operation of the geometry core that acts channel by channel."""

    def __init__(self, window: Window, clean: Callable[[Tensor], Tensor], label: str) -> None:
        if window.bound.get("return_indices"):
            raise IncrementalUnsupported(f"{label} returns indices")
        if window.op.name == "conv2d":
            raise IncrementalUnsupported(f"{label}: a functional convolution (weights as inputs)")
        self.window = window
        self.footprint = window.axes
        self.fill = window.fill
        self.function = clean
        self.label = label

    def clean(self, values: Sequence[Tensor]) -> Tensor:
        x = values[0]
        out = self.function(x)
        if self.window.ceil_mode and not self.window.op.ceil_by_fill:
            floor = tuple(
                (n + 2 * f.padding - f.span) // f.stride + 1
                for n, f in zip(x.shape[-2:], self.footprint, strict=True)
            )
            if tuple(out.shape[-2:]) != floor:
                raise IncrementalUnsupported(f"{self.label}: ceil_mode adds partial windows")
        return out

    def patch(self, regions: Sequence[Tensor], channels: Channels) -> Tensor:
        return self.window.unpadded(regions[0])


class _AvgPool(_Node):
    def __init__(self, window: Window, clean: Callable[[Tensor], Tensor]) -> None:
        self.window = window
        self.function = clean
        self.footprint = window.axes
        self.divisor: Tensor | None = None

    def clean(self, values: Sequence[Tensor]) -> Tensor:
        x = values[0]
        # How many terms each output position divides by (set by the clean pass).
        ones = torch.ones((1, 1, *x.shape[-2:]), dtype=x.dtype, device=x.device)
        bound = dict(self.window.bound, divisor_override=1)
        summed = F.avg_pool2d(ones, **bound)
        self.divisor = (summed / self.function(ones)).round()
        return self.function(x)

    def patch(self, regions: Sequence[Tensor], channels: Channels) -> Tensor:
        raise AssertionError("handled by the engine")  # pragma: no cover

    def sum_patch(self, region: Tensor) -> Tensor:
        b = self.window.bound
        return F.avg_pool2d(region, b["kernel_size"], b["stride"], 0, False, True, 1)


class _Pointwise(_Node):
    """An element-wise function of one tensor (maybe channel dependent, like batch norm)."""

    def __init__(self, function: Callable[[Tensor, Channels], Tensor]) -> None:
        self.function = function

    def clean(self, values: Sequence[Tensor]) -> Tensor:
        return self.function(values[0], None)

    def patch(self, regions: Sequence[Tensor], channels: Channels) -> Tensor:
        return self.function(regions[0], channels)


class _BatchNorm(_Pointwise):
    """Eval batch norm; folded into the convolution before it where that is its only reader."""

    def __init__(self, module: nn.BatchNorm2d, function: Callable[[Tensor, Channels], Tensor]):
        super().__init__(function)
        self.module = module

    def fold_away(self) -> None:
        self.function = lambda x, channels: x


class _SizeKeeping(_Node):
    """An adaptive pooling to the size of its input: the identity (each bin is one unit).

    The clean pass checks the size; an adaptive pooling that changes it is a global
    operation and is refused.
    """

    def __init__(self, module: nn.Module, label: str) -> None:
        self.module = module
        self.label = label

    def clean(self, values: Sequence[Tensor]) -> Tensor:
        out = self.module.forward(values[0])
        if out.shape[-2:] != values[0].shape[-2:]:
            raise IncrementalUnsupported(f"{self.label} changes the map size (global op)")
        return out

    def patch(self, regions: Sequence[Tensor], channels: Channels) -> Tensor:
        return regions[0]


class _Merge(_Node):
    """Several same-shape tensors combined element-wise (``+``, ``-``, ``*``, ``/``)."""

    merge = True

    def __init__(self, function: Callable[[list[Tensor]], Tensor]) -> None:
        self.function = function

    def clean(self, values: Sequence[Tensor]) -> Tensor:
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) != 1:
            raise IncrementalUnsupported(
                f"{self.name} combines tensors of different shapes {sorted(shapes)} (broadcast)"
            )
        return self.function(list(values))


class _Cat(_Node):
    """Concatenation along the channel dimension."""

    merge = True

    def clean(self, values: Sequence[Tensor]) -> Tensor:
        spatial = {tuple(v.shape[-2:]) for v in values}
        if len(spatial) != 1:
            raise IncrementalUnsupported(f"{self.name} concatenates maps of different sizes")
        return torch.cat(list(values), 1)

    def input_channels(self, channels: Channels, shapes: Sequence[torch.Size]) -> list[Channels]:
        if channels is None:
            return [None for _ in self.inputs]
        out: list[Channels] = []
        offset = 0
        for shape in shapes:
            count = shape[1]
            out.append([c - offset for c in channels if offset <= c < offset + count])
            offset += count
        return out

    def patch(self, regions: Sequence[Tensor | None], channels: Channels) -> Tensor:  # type: ignore[override]
        return torch.cat([r for r in regions if r is not None], 1)
