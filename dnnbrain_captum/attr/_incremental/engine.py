"""The incremental engine: clean activations once per image, patches per batch of windows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnnbrain_captum._utils.layers import layer_path
from dnnbrain_captum._utils.targets import per_example_targets, reduce_per_example
from dnnbrain_captum.attr._incremental.cache import cached_analysis
from dnnbrain_captum.attr._incremental.geometry import _Axis, _Edge
from dnnbrain_captum.attr._incremental.nodes import (
    IncrementalUnsupported,
    _AvgPool,
    _Conv,
    _Input,
)
from dnnbrain_captum.attr._incremental.planning import _Plan, make_plan
from dnnbrain_captum.attr._incremental.trace import _Graph, analyse


class IncrementalOcclusion:
    """Occluded target values of a model, computed incrementally from clean activations.

    Parameters
    ----------
    model : nn.Module
        The model (traced with torch.fx).
    layer : nn.Module, optional
        The target layer.
    graph : _Graph, optional
        The operations to run instead of the path to ``layer`` (see ``output.py``).

    Raises
    ------
    IncrementalUnsupported
        When the path to ``layer`` contains an operation without a known footprint.
    """

    def __init__(
        self, model: nn.Module, layer: nn.Module | None = None, graph: _Graph | None = None
    ) -> None:
        if graph is None:
            if layer is None:
                raise ValueError("give the target layer or the graph")
            graph = cached_analysis(
                model, ("layer", layer_path(model, layer)), lambda: analyse(model, layer)
            )
        for node in graph.nodes:
            if isinstance(node, _Conv):
                node.refresh()  # fold a batch norm with the weights and statistics of now
        self.graph = graph
        self.clean_values: list[Tensor] = []
        self._targets: list[tuple[int, tuple[int, int] | None]] = []
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._images = torch.empty(0)

    # -- clean pass ---------------------------------------------------------------------------
    def run_clean(self, x: Tensor) -> Tensor:
        """Run the traced path on clean images; return the target layer's output."""
        values: list[Tensor] = []
        for node in self.graph.nodes:
            if isinstance(node, _Input):
                out = x
            else:
                out = node.clean([values[i] for i in node.inputs])
            if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[0] != x.shape[0]:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise IncrementalUnsupported(
                    f"{node.name} gives {shape}, not a batch of maps (N, C, H, W)"
                )
            values.append(out)
        self.clean_values = values
        return values[self.graph.target]

    # -- plans --------------------------------------------------------------------------------
    def plan(
        self,
        target_channels: list[int] | None,
        window: tuple[int, int],
        stride: tuple[int, int],
        grid: tuple[int, int],
    ) -> _Plan:
        """The patch geometry and channel selection for windows on the clean images' grid.

        ``target_channels``: the target node's channels to compute (None: all of them). Plans
        depend only on shapes; they are kept for the images that follow.
        """
        key = (None if target_channels is None else tuple(target_channels), window, stride, grid)
        if key not in self._plans:
            self._plans[key] = make_plan(
                self.graph, self.clean_values, target_channels, window, stride, grid
            )
        return self._plans[key]

    # -- per image ----------------------------------------------------------------------------
    def _padded_clean(self, plan: _Plan) -> dict[tuple[int, int], Tensor]:
        """Clean producer maps, channel-selected, padded, flattened channels-last."""
        padded: dict[tuple[int, int], Tensor] = {}
        nodes = self.graph.nodes
        for k in plan.delta:
            for key, m in ((-1, nodes[k].inputs[0]), (-2, k)):
                clean = self.clean_values[m][0]
                if plan.channels[m] is not None:  # the target's selected channels
                    clean = clean[plan.channels[m]]
                padded[(k, key)] = _rows_of_channels(clean)
        for k in plan.order:
            node = nodes[k]
            for slot, i in enumerate(node.inputs):
                pair_ = plan.edges[k][slot]
                if pair_ is None:
                    continue
                clean = self.clean_values[i][0]
                have = plan.channels[i]
                if have is not None:
                    clean = clean.index_select(
                        0, torch.tensor(have, dtype=torch.long, device=clean.device)
                    )
                sel = plan.select[k][slot]
                if sel is not None and sel.numel() == 0:
                    continue
                if sel is not None:
                    clean = clean.index_select(0, sel)
                er, ec = pair_
                clean = F.pad(
                    clean,
                    (ec.pad_before, ec.pad_after, er.pad_before, er.pad_after),
                    value=node.fill,
                )
                padded[(k, slot)] = _rows_of_channels(clean)
        return padded

    def occluded(
        self,
        plan: _Plan,
        rows: Tensor,
        cols: Tensor,
        fill: Tensor,
        padded: dict[tuple[int, int], Tensor],
        in_patch: Tensor | None = None,
    ) -> Tensor:
        """Target layer output patch for the windows at grid (rows, cols) of one image.

        ``fill`` is the occluder content of the whole image (C, H, W); or give ``in_patch``,
        the new content of each window's input patch itself, shape (B, C, h, w) with (h, w)
        the plan's input patch size (each window then carries its own content).
        Returns the patch of the target node, shape (B, C_target, L_h, L_w).
        """
        nodes = self.graph.nodes
        device = fill.device
        patches: dict[int, Tensor] = {}
        if in_patch is None:  # the occluder's content in each window
            ax0, ax1 = plan.axes[0]
            r0 = ax0.start.to(device)[rows]
            c0 = ax1.start.to(device)[cols]
            ar_h = torch.arange(ax0.length, device=device)
            ar_w = torch.arange(ax1.length, device=device)
            in_patch = fill[:, (r0[:, None] + ar_h)[:, :, None], (c0[:, None] + ar_w)[:, None, :]]
            in_patch = in_patch.permute(1, 0, 2, 3)  # (B, C, h, w)
        if plan.channels[0] is not None:
            in_patch = in_patch.index_select(
                1, torch.tensor(plan.channels[0], dtype=torch.long, device=device)
            )
        patches[0] = in_patch
        for k in plan.order:
            node = nodes[k]
            regions = []
            for slot, i in enumerate(node.inputs):
                sel = plan.select[k][slot]
                if sel is not None and sel.numel() == 0:
                    regions.append(None)
                    continue
                source = patches[i]
                if sel is not None:
                    source = source.index_select(1, sel)
                pair_ = plan.edges[k][slot]
                if pair_ is None:
                    regions.append(source)
                    continue
                regions.append(self._region(pair_, source, padded[(k, slot)], rows, cols))
            if k in plan.delta:
                patches[k] = self._delta_conv(plan, k, regions[0], rows, cols, padded)
            elif isinstance(node, _AvgPool):
                assert node.divisor is not None
                ah, aw = plan.axes[k]
                rr = ah.start.to(device)[rows][:, None] + torch.arange(ah.length, device=device)
                cc = aw.start.to(device)[cols][:, None] + torch.arange(aw.length, device=device)
                divisor = node.divisor[0, 0][rr[:, :, None], cc[:, None, :]]
                patches[k] = node.sum_patch(regions[0]) / divisor[:, None]
            else:
                patches[k] = node.patch(regions, plan.channels[k])
            for i in plan.last_read.get(k, ()):
                patches.pop(i, None)  # nothing after k reads it: free the memory now
        return patches[self.graph.target]

    def _delta_conv(
        self,
        plan: _Plan,
        k: int,
        source: Tensor,
        rows: Tensor,
        cols: Tensor,
        padded: dict[tuple[int, int], Tensor],
    ) -> Tensor:
        """Output patch of convolution ``k`` as clean output + conv(input patch − clean).

        The convolution of the change, which is zero outside the input patch, is the
        transposed convolution of the change with the flipped kernel; its output covers the
        input patch widened by the kernel's span, and is added where it meets the patch.
        """
        node = self.graph.nodes[k]
        assert isinstance(node, _Conv)
        i = node.inputs[0]
        device = source.device
        b, c_in, lih, liw = source.shape
        clean_in = padded[(k, -1)].index_select(
            0, patch_index(plan.axes[i], rows, cols, self.clean_values[i].shape[-1], device)
        )
        change = source - clean_in.view(b, lih, liw, c_in).permute(0, 3, 1, 2)
        flipped = node.transposed(plan.channels[k])
        grown = F.conv_transpose2d(change, flipped, None, 1, 0, 0, 1, node.module.dilation)
        c_out, gh, gw = grown.shape[1:]
        loh, low = plan.axes[k][0].length, plan.axes[k][1].length
        size = b * loh * low
        index = patch_index(plan.axes[k], rows, cols, self.clean_values[k].shape[-1], device)
        # (index_select: rows of a matrix, much faster than advanced indexing on a CPU)
        out = padded[(k, -2)].index_select(0, torch.cat([index, index[:1]]))  # a spare row
        shift_r, shift_c = plan.delta[k]
        dest_r = torch.arange(gh, device=device) - shift_r.to(device)[rows][:, None]
        dest_c = torch.arange(gw, device=device) - shift_c.to(device)[cols][:, None]
        inside = ((dest_r >= 0) & (dest_r < loh))[:, :, None] & ((dest_c >= 0) & (dest_c < low))[
            :, None, :
        ]
        dest = (
            torch.arange(b, device=device)[:, None, None] * (loh * low)
            + dest_r[:, :, None] * low
            + dest_c[:, None, :]
        )
        dest = torch.where(inside, dest, size).reshape(-1)
        out.index_add_(0, dest, grown.permute(0, 2, 3, 1).reshape(-1, c_out))
        return out[:size].view(b, loh, low, c_out).permute(0, 3, 1, 2)

    @staticmethod
    def _region(
        pair_: tuple[_Edge, _Edge],
        patch: Tensor,
        padded: Tensor,
        rows: Tensor,
        cols: Tensor,
    ) -> Tensor:
        """Producer values over the consumer's input region: clean, with the patch pasted.

        ``padded`` is the producer's clean map, padded and flattened channels-last
        (H_p·W_p, C). Returns (B, C, need_h, need_w), channels-last in memory.
        """
        er, ec = pair_
        device = patch.device
        b, channels, lh, lw = patch.shape
        nh, nw = er.need, ec.need
        size = b * nh * nw
        width = ec.pad_before + ec.size + ec.pad_after
        top = er.first.to(device)[rows] + er.pad_before
        left = ec.first.to(device)[cols] + ec.pad_before
        flat = (
            (top[:, None] + torch.arange(nh, device=device))[:, :, None] * width
            + (left[:, None] + torch.arange(nw, device=device))[:, None, :]
        ).reshape(-1)
        # One spare row at the end receives the patch values that fall outside the region.
        region = padded.index_select(0, torch.cat([flat, flat[:1]]))
        place_r = er.place.to(device)[rows][:, None] + torch.arange(lh, device=device)
        place_c = ec.place.to(device)[cols][:, None] + torch.arange(lw, device=device)
        inside = ((place_r >= 0) & (place_r < nh))[:, :, None] & ((place_c >= 0) & (place_c < nw))[
            :, None, :
        ]
        dest = (
            torch.arange(b, device=device)[:, None, None] * (nh * nw)
            + place_r[:, :, None] * nw
            + place_c[:, None, :]
        )
        dest = torch.where(inside, dest, size).reshape(-1)
        region.index_copy_(0, dest, patch.permute(0, 2, 3, 1).reshape(-1, channels))
        return region[:size].view(b, nh, nw, channels).permute(0, 3, 1, 2)

    # -- the whole map ------------------------------------------------------------------------
    def clean_targets(self, x: Tensor, target: Any, reduction: str) -> Tensor:
        """The target's clean value per image, shape (N,); remembers the images.

        The clean pass runs one image at a time (and again per image in
        :meth:`occluded_values`), so that only one image's activations are held at once.
        """
        n = x.shape[0]
        entries = per_example_targets(target, n)
        values = []
        self._targets = []
        for k in range(n):
            target_map = self.run_clean(x[k : k + 1])
            entry = entries[k] if entries is not None else target
            channel, unit = _target_of(entry, target_map.shape[1:])
            self._targets.append((channel, unit))
            values.append(_reduce_maps(target_map[0, channel][None], reduction, unit))
        self._images = x
        return torch.cat(values)

    def occluded_values(
        self,
        fill: Tensor,
        reduction: str,
        window: tuple[int, int],
        stride: tuple[int, int],
        grid: tuple[int, int],
        batch: int,
        positions: Tensor | None = None,
    ) -> Iterator[Tensor]:
        """Occluded target values, one tensor per batch of windows, image after image.

        Call :meth:`clean_targets` first. ``fill`` is the occluder content (N or 1, C, H, W);
        ``positions`` optionally restricts the windows (flat row-major grid indices, the same
        for every image; used by benchmarks).
        """
        device = self._images.device
        if positions is None:
            positions = torch.arange(grid[0] * grid[1], device=device)
        for image, (channel, unit) in enumerate(self._targets):
            target_map = self.run_clean(self._images[image : image + 1])
            plan = self.plan([channel], window, stride, grid)
            clean_map = target_map[0, channel]
            fill_image = fill[image if fill.shape[0] > 1 else 0].expand(
                self.clean_values[0].shape[1:]
            )
            padded = self._padded_clean(plan)
            ah, aw = plan.axes[self.graph.target]
            start_r, start_c = ah.start.to(device), aw.start.to(device)
            ar_h = torch.arange(ah.length, device=device)
            ar_w = torch.arange(aw.length, device=device)
            height, width = clean_map.shape
            flat_clean = clean_map.reshape(-1)
            for begin in range(0, len(positions), batch):
                index = positions[begin : begin + batch]
                rows, cols = index // grid[1], index % grid[1]
                patch = self.occluded(plan, rows, cols, fill_image, padded)[:, 0]
                b = patch.shape[0]
                rr = start_r[rows][:, None] + ar_h
                cc = start_c[cols][:, None] + ar_w
                spots = (rr[:, :, None] * width + cc[:, None, :]).reshape(b, -1)
                maps = flat_clean.expand(b, -1).clone()
                maps.scatter_(1, spots, patch.reshape(b, -1))
                yield _reduce_maps(maps.view(b, height, width), reduction, unit)

    # -- arithmetic ---------------------------------------------------------------------------
    def macs_per_window(self, plan: _Plan) -> tuple[int, int]:
        """Multiply-adds per window: (incremental patches, full maps with the same channels)."""
        incremental = full = 0
        for k in plan.order:
            node = self.graph.nodes[k]
            shape = self.clean_values[k].shape
            ah, aw = plan.axes[node.inputs[0] if k in plan.delta else k]
            incremental += node.macs(plan.channels[k], shape, ah.length * aw.length)
            full += node.macs(plan.channels[k], shape, shape[-2] * shape[-1])
        return incremental, full

    def elements_per_window(self, plan: _Plan) -> tuple[int, int]:
        """Output elements written per window: (incremental patches, full maps), every
        operation with the channels it computes (the cost model's element traffic)."""
        incremental = full = 0
        for k in plan.order:
            channels = plan.channels[k]
            shape = self.clean_values[k].shape
            count = shape[1] if channels is None else len(channels)
            ah, aw = plan.axes[k]
            incremental += count * ah.length * aw.length
            full += count * shape[-2] * shape[-1]
        return incremental, full

    def moved_per_window(self, plan: _Plan) -> int:
        """Elements one window gathers and writes besides the arithmetic (the cost model).

        The input region of every operation read with a margin (gathered from the padded clean
        map, the patch pasted in) and, for a convolution computed from its input's change, the
        clean values under its input and output patches.
        """
        moved = 0
        for k in plan.order:
            node = self.graph.nodes[k]
            for slot, i in enumerate(node.inputs):
                pair_ = plan.edges[k][slot]
                sel = plan.select[k][slot]
                stored = plan.channels[i]
                count = self.clean_values[i].shape[1] if stored is None else len(stored)
                count = count if sel is None else int(sel.numel())
                if pair_ is not None:
                    moved += pair_[0].need * pair_[1].need * count
                elif k in plan.delta:
                    ih, iw = plan.axes[i]
                    oh, ow = plan.axes[k]
                    out = self.clean_values[k].shape[1]
                    moved += ih.length * iw.length * count + oh.length * ow.length * out
        return moved

    def patch_bytes(self, plan: _Plan) -> int:
        """Bytes one window needs at once: the peak, over the operations in order, of the
        patches still to be read plus the regions assembled for the operation running."""
        nodes = self.graph.nodes

        def count(k: int) -> int:
            channels = plan.channels[k]
            return self.clean_values[k].shape[1] if channels is None else len(channels)

        ah, aw = plan.axes[0]
        live = {0: count(0) * ah.length * aw.length}
        peak = 0
        for k in plan.order:
            ah, aw = plan.axes[k]
            live[k] = count(k) * ah.length * aw.length
            regions = sum(
                pair_[0].need * pair_[1].need * count(i)
                for pair_, i in zip(plan.edges[k], nodes[k].inputs, strict=True)
                if pair_ is not None
            )
            peak = max(peak, sum(live.values()) + regions)
            for i in plan.last_read.get(k, ()):
                live.pop(i, None)
        return peak * self.clean_values[0].element_size()

    def sweep_plan(
        self, window: tuple[int, int], stride: tuple[int, int], grid: tuple[int, int]
    ) -> _Plan:
        """The plan of the first image's target (after :meth:`clean_targets`)."""
        return self.plan([self._targets[0][0]], window, stride, grid)


def _rows_of_channels(clean: Tensor) -> Tensor:
    """A (C, H, W) map as (H·W, C) rows, contiguous: each position's channels side by side.

    A row gather (``index_select``) then copies contiguous rows; on a channels-first map the
    same view would gather C strided elements per row (AlexNet's image: 15× slower).
    """
    return clean.permute(1, 2, 0).contiguous().view(-1, clean.shape[0])


def patch_index(
    axes: tuple[_Axis, _Axis], rows: Tensor, cols: Tensor, width: int, device: torch.device
) -> Tensor:
    """Flat (row-major) positions of the patches of windows (rows, cols) in a map."""
    ah, aw = axes
    top = ah.start.to(device)[rows][:, None] + torch.arange(ah.length, device=device)
    left = aw.start.to(device)[cols][:, None] + torch.arange(aw.length, device=device)
    return (top[:, :, None] * width + left[:, None, :]).reshape(-1)


def _target_of(entry: Any, shape: torch.Size) -> tuple[int, tuple[int, int] | None]:
    """(channel, unit position or None) of one example's target; validated by the caller."""
    if isinstance(entry, (tuple, list)):
        if len(entry) != 3:
            raise IncrementalUnsupported(f"target {entry!r} is not a (c, i, j) unit")
        c, i, j = (int(v) for v in entry)
        return c, (i, j)
    if isinstance(entry, Tensor):
        entry = int(entry.item())
    return int(entry), None


def _reduce_maps(maps: Tensor, reduction: str, unit: tuple[int, int] | None) -> Tensor:
    if unit is not None:
        return maps[:, unit[0], unit[1]]
    return reduce_per_example(maps, reduction)
