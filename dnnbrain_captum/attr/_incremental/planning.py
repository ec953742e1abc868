"""The plan of one sweep: channels each operation must compute, patch geometry, delta convs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dnnbrain_captum.attr._incremental.cost import DELTA_MOVE_COST, TRANSPOSED_PENALTY
from dnnbrain_captum.attr._incremental.geometry import _Axis, _Edge, _edge, _through, _union
from dnnbrain_captum.attr._incremental.nodes import IDENTITY, Channels, _Conv, _Input, _Node
from dnnbrain_captum.attr._incremental.trace import _Graph


@dataclass
class _Plan:
    """Everything fixed for one image size, window, stride and target channel set."""

    channels: list[Channels]  # stored channels per node
    select: list[list[Tensor | None]]  # per node, per input: index into the input's channels
    axes: list[tuple[_Axis, _Axis]]
    edges: list[list[tuple[_Edge, _Edge] | None]]  # None: use the input's patch as it is
    order: list[int]  # nodes to compute per batch (not the input)
    # Convolutions computed from the change of their input (see ``_delta_conv``): node →
    # per-position offset (rows, cols) of the transposed convolution's output in the patch.
    delta: dict[int, tuple[Tensor, Tensor]]
    # node → the inputs whose patches no later node reads (freed after it is computed).
    last_read: dict[int, list[int]] = field(default_factory=dict)


def make_plan(
    graph: _Graph,
    values: Sequence[Tensor],
    target_channels: list[int] | None,
    window: tuple[int, int],
    stride: tuple[int, int],
    grid: tuple[int, int],
) -> _Plan:
    """The plan for windows on the grid of images whose clean activations are ``values``."""
    nodes = graph.nodes
    shapes = [v.shape for v in values]
    wanted = _wanted_channels(nodes, shapes, graph.target, target_channels)
    stored: list[Channels] = [
        None if w is None or w is False else sorted(w)  # type: ignore[arg-type]
        for w in wanted
    ]
    select = _selections(nodes, shapes, stored, values[0].device)
    axes, edges = _geometry(nodes, shapes, window, stride, grid)
    order = [
        k for k in range(len(nodes)) if not isinstance(nodes[k], _Input) and wanted[k] is not False
    ]
    delta: dict[int, tuple[Tensor, Tensor]] = {}
    for k in order:
        node = nodes[k]
        if not isinstance(node, _Conv) or not _delta_pays(node, k, stored, select, axes):
            continue
        i = node.inputs[0]
        fp = node.footprint
        assert fp is not None
        delta[k] = tuple(  # type: ignore[assignment]
            axes[k][a].start - fp[a].padding - axes[i][a].start + (fp[a].span - 1) for a in range(2)
        )
        edges[k] = [None]
    last: dict[int, int] = {}
    for k in order:
        for i in nodes[k].inputs:
            last[i] = k
    last_read: dict[int, list[int]] = {}
    for i, k in last.items():
        if i != graph.target:
            last_read.setdefault(k, []).append(i)
    return _Plan(stored, select, axes, edges, order, delta, last_read)


def _wanted_channels(
    nodes: Sequence[_Node],
    shapes: Sequence[torch.Size],
    target: int,
    target_channels: list[int] | None,
) -> list[set[int] | None | bool]:
    """Channels each node must compute, from the target backwards (False: not needed)."""
    n = len(nodes)
    wanted: list[set[int] | None | bool] = [False] * n
    wanted[target] = None if target_channels is None else set(target_channels)
    for k in range(n - 1, -1, -1):
        if wanted[k] is False:
            continue
        mine = wanted[k]
        channels = None if mine is None else sorted(mine)  # type: ignore[arg-type]
        needs = nodes[k].input_channels(channels, [shapes[i] for i in nodes[k].inputs])
        for i, need in zip(nodes[k].inputs, needs, strict=True):
            if need is not None and not need:
                continue  # none of this input's channels is needed (concatenation)
            if need is None or wanted[i] is None:
                wanted[i] = None
            elif wanted[i] is False:
                wanted[i] = set(need)
            else:
                wanted[i] = wanted[i] | set(need)  # type: ignore[operator]
    return wanted


def _selections(
    nodes: Sequence[_Node],
    shapes: Sequence[torch.Size],
    stored: list[Channels],
    device: torch.device,
) -> list[list[Tensor | None]]:
    """Per node, per input: index into the input's stored channels (None: all, in order)."""
    select: list[list[Tensor | None]] = []
    for k, node in enumerate(nodes):
        needs = node.input_channels(stored[k], [shapes[i] for i in node.inputs])
        row: list[Tensor | None] = []
        for i, need in zip(node.inputs, needs, strict=True):
            have = stored[i]
            if need is not None and not need:
                row.append(torch.empty(0, dtype=torch.long, device=device))
                continue
            if need is None or (
                have is None and len(need) == shapes[i][1] and need == list(range(shapes[i][1]))
            ):
                row.append(None)
            elif have is None:
                row.append(torch.tensor(need, dtype=torch.long, device=device))
            else:
                where = {c: p for p, c in enumerate(have)}
                positions = [where[c] for c in need]
                row.append(
                    None
                    if positions == list(range(len(have)))
                    else torch.tensor(positions, dtype=torch.long, device=device)
                )
        select.append(row)
    return select


def _geometry(
    nodes: Sequence[_Node],
    shapes: Sequence[torch.Size],
    window: tuple[int, int],
    stride: tuple[int, int],
    grid: tuple[int, int],
) -> tuple[list[tuple[_Axis, _Axis]], list[list[tuple[_Edge, _Edge] | None]]]:
    """Per node, the patch of each window per axis, and how its input regions are assembled."""
    axes: list[tuple[_Axis, _Axis]] = []
    edges: list[list[tuple[_Edge, _Edge] | None]] = []
    for k, node in enumerate(nodes):
        size = (shapes[k][-2], shapes[k][-1])
        if isinstance(node, _Input):
            per_axis = []
            for a in range(2):
                lo = torch.arange(grid[a]) * stride[a]
                per_axis.append(_Axis(lo, lo + window[a], window[a], lo.clone()))
            axes.append((per_axis[0], per_axis[1]))
            edges.append([])
            continue
        fp = node.footprint or (IDENTITY, IDENTITY)
        if node.footprint is not None:
            mine = tuple(_through(axes[node.inputs[0]][a], fp[a], size[a]) for a in range(2))
        elif node.merge:
            mine = tuple(_union([axes[i][a] for i in node.inputs], size[a]) for a in range(2))
        else:
            mine = axes[node.inputs[0]]
        axes.append(mine)  # type: ignore[arg-type]
        row_edges: list[tuple[_Edge, _Edge] | None] = []
        # A position-wise operation (1x1 stride-1 convolutions too) reads its input's patch as
        # it is where the patches coincide: no region to assemble.
        pointwise = all(f.kernel == 1 and f.stride == 1 and f.padding == 0 for f in fp)
        for i in node.inputs:
            theirs = axes[i]
            if pointwise and all(
                theirs[a] is mine[a]
                or (
                    theirs[a].length == mine[a].length
                    and torch.equal(theirs[a].start, mine[a].start)
                )
                for a in range(2)
            ):
                row_edges.append(None)
            else:
                row_edges.append(
                    (
                        _edge(mine[0], theirs[0], fp[0], shapes[i][-2]),
                        _edge(mine[1], theirs[1], fp[1], shapes[i][-1]),
                    )
                )
        edges.append(row_edges)
    return axes, edges


def _delta_pays(
    node: _Conv,
    k: int,
    stored: list[Channels],
    select: list[list[Tensor | None]],
    axes: list[tuple[_Axis, _Axis]],
) -> bool:
    """Whether a convolution is cheaper from its input's change (a transposed conv).

    Its output patch = clean output + conv(new input patch − clean input patch); the
    change is zero outside the input patch, so the multiply-adds scale with the input
    patch's area instead of the output patch's, and the input region with its margin need not
    be assembled. Possible for stride-1, ungrouped convolutions reading all their input's
    channels (any selection of output channels); chosen when the cost model
    (:mod:`~dnnbrain_captum.attr._incremental.cost`: multiply-adds, the transposed
    convolution's lower rate, moved elements) says it is cheaper than the direct one.
    """
    module = node.module
    i = node.inputs[0]
    if tuple(module.stride) != (1, 1) or module.groups != 1:
        return False
    if stored[i] is not None or select[k][0] is not None:
        return False
    fp = node.footprint
    assert fp is not None
    c_in = module.in_channels
    c_out = module.out_channels if stored[k] is None else len(stored[k])  # type: ignore[arg-type]
    taps = fp[0].kernel * fp[1].kernel
    area_in = axes[i][0].length * axes[i][1].length
    area_out = axes[k][0].length * axes[k][1].length
    need = (axes[k][0].length + fp[0].span - 1) * (axes[k][1].length + fp[1].span - 1)
    grown = (axes[i][0].length + fp[0].span - 1) * (axes[i][1].length + fp[1].span - 1)
    direct = area_out * c_in * c_out * taps + DELTA_MOVE_COST * (need + area_in) * c_in
    delta = TRANSPOSED_PENALTY * area_in * c_in * c_out * taps + DELTA_MOVE_COST * (
        2 * area_in * c_in + (area_out + grown) * c_out
    )
    return delta < direct
