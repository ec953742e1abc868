"""Incremental inference through to the model output (class targets, ``layer=None``).

The traced model is cut at its *last spatial value*: the latest operation that the
incremental engine can compute as patches (it and everything before it have known
footprints) and through which every path from the image to the output passes (a
dominator; a ResNet's last block output, VGG's last pooling, a DenseNet's last
activation). Up to the cut, each batch of windows is computed as patches (``engine.py``); the
rest of the model (the *head*: pooling, flatten, classifier) runs on

* the clean cut map with each window's patch pasted in, batched over windows, or
* when the cut's only reader is a global average pooling (``nn.AdaptiveAvgPool2d(1)``,
  ``F.adaptive_avg_pool2d(x, 1)``, ``x.mean((2, 3))``), the clean pooled vector corrected by
  the patch's change: ``pooled + (Σ patch − Σ clean patch) / (H·W)``; the head then starts
  after the pooling.

Both equal the full forward pass up to floating-point rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from dnnbrain_captum._utils.targets import per_example_targets, select_output_target
from dnnbrain_captum.attr._incremental.cache import cached_analysis
from dnnbrain_captum.attr._incremental.cost import batch_size
from dnnbrain_captum.attr._incremental.engine import IncrementalOcclusion, patch_index
from dnnbrain_captum.attr._incremental.mutation import check_no_hidden_writes
from dnnbrain_captum.attr._incremental.nodes import IncrementalUnsupported, _SizeKeeping
from dnnbrain_captum.attr._incremental.planning import _Plan
from dnnbrain_captum.attr._incremental.trace import _convert_node, _Graph, convert, trace

__all__ = ["OutputOcclusion"]


class _Shapes(fx.Interpreter):
    """Runs the traced model once, recording the shape of every tensor value."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.shapes: dict[fx.Node, tuple[int, ...] | None] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.shapes[n] = tuple(out.shape) if isinstance(out, Tensor) else None
        return out


def _spatial_nodes(
    model: nn.Module, nodes: list[fx.Node], shapes: dict[fx.Node, tuple[int, ...] | None]
) -> list[fx.Node]:
    """Nodes the engine can compute as patches (with all their ancestors), in order."""
    image = next(n for n in nodes if n.op == "placeholder")
    ok: set[fx.Node] = {image}
    found = []
    for node in nodes:
        shape = shapes.get(node)
        if node is image or shape is None or len(shape) != 4:
            continue
        if not all(a in ok for a in node.all_input_nodes):
            continue
        try:
            converted, _ = _convert_node(model, node, image)
        except IncrementalUnsupported:
            continue
        if isinstance(converted, _SizeKeeping) and shapes.get(node.all_input_nodes[0]) != shape:
            continue
        ok.add(node)
        found.append(node)
    return found


def _head_nodes(cut: fx.Node, output: fx.Node) -> set[fx.Node] | None:
    """The nodes the output needs beyond ``cut``; None if the image reaches it another way."""
    seen: set[fx.Node] = set()
    stack = [output]
    while stack:
        node = stack.pop()
        if node in seen or node is cut:
            continue
        if node.op == "placeholder":
            return None
        seen.add(node)
        stack.extend(node.all_input_nodes)
    return seen


def _is_global_mean(
    model: nn.Module, node: fx.Node, shapes: dict[fx.Node, tuple[int, ...] | None]
) -> bool:
    """Whether ``node`` averages its 4-D input over both spatial axes (and nothing else)."""
    before, after = shapes.get(node.all_input_nodes[0]), shapes.get(node)
    if before is None or after not in (before[:2] + (1, 1), before[:2]):
        return False
    args = node.args[1:]
    if node.op == "call_module":
        return isinstance(model.get_submodule(str(node.target)), nn.AdaptiveAvgPool2d)
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        return True
    if (node.op == "call_method" and node.target == "mean") or node.target is torch.mean:
        dims = args[0] if args else node.kwargs.get("dim")
        return isinstance(dims, (tuple, list)) and sorted(d % 4 for d in dims) == [2, 3]
    return False


def _subgraph(
    model: nn.Module, nodes: list[fx.Node], keep: set[fx.Node], cut: fx.Node
) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {cut: graph.placeholder("cut")}
    for node in nodes:
        if node in keep:
            env[node] = graph.node_copy(node, lambda a: env[a])
    return fx.GraphModule(model, graph)


@dataclass
class _Cut:
    """Where the model is cut, and the head that runs after the cut."""

    graph: _Graph
    head: fx.GraphModule
    pooled: bool
    pooled_shape: tuple[int, ...] | None
    name: str


def _analyse(model: nn.Module, image: Tensor) -> _Cut:
    """The cut of ``model`` for images of the size of ``image`` (see the module doc)."""
    if model._forward_hooks or model._forward_pre_hooks:
        raise IncrementalUnsupported("the model itself has forward hooks")
    traced = trace(model)
    nodes = list(traced.graph.nodes)
    check_no_hidden_writes(nodes, model)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise IncrementalUnsupported("the model takes more than the image")
    recorder = _Shapes(traced)
    recorder.run(image)
    shapes = recorder.shapes
    output = next(n for n in nodes if n.op == "output")
    for cut in reversed(_spatial_nodes(model, nodes, shapes)):
        head = _head_nodes(cut, output)
        if head is not None:
            break
    else:
        raise IncrementalUnsupported("no spatial operation lies on every path to the output")
    pooled = len(cut.users) == 1 and _is_global_mean(model, next(iter(cut.users)), shapes)
    start = next(iter(cut.users)) if pooled else cut
    if pooled:
        head.discard(start)
    graph = convert(model, nodes, cut)
    subgraph = _subgraph(model, nodes, head, start)
    return _Cut(graph, subgraph, pooled, shapes[start] if pooled else None, cut.name)


class OutputOcclusion:
    """Occluded values of a model's output target, by incremental inference up to the cut.

    Parameters
    ----------
    model : nn.Module
        The model (traced with ``torch.fx``).
    image : Tensor of shape (1, C, H, W)
        An image of the size to be occluded (the cut depends on the shapes).

    Raises
    ------
    IncrementalUnsupported
        When no spatial operation dominates the output, or the graph cannot be trusted.
    """

    def __init__(self, model: nn.Module, image: Tensor) -> None:
        question = ("output", tuple(image.shape[1:]), image.dtype)
        cut = cached_analysis(model, question, lambda: _analyse(model, image))
        self.pooled, self.pooled_shape, self.head = cut.pooled, cut.pooled_shape, cut.head
        self.engine = IncrementalOcclusion(model, graph=cut.graph)
        self.cut_name = cut.name
        self._entries: list[Any] = []
        self._images = image

    def sweep_plan(
        self, window: tuple[int, int], stride: tuple[int, int], grid: tuple[int, int]
    ) -> _Plan:
        """The plan of the sweep (every channel of the cut; after :meth:`clean_targets`)."""
        return self.engine.plan(None, window, stride, grid)

    def macs_per_window(self, plan: _Plan) -> tuple[int, int]:
        """Multiply-adds per window up to the cut: (incremental, full)."""
        return self.engine.macs_per_window(plan)

    def elements_per_window(self, plan: _Plan) -> tuple[int, int]:
        """Output elements written per window up to the cut: (incremental, full)."""
        return self.engine.elements_per_window(plan)

    def moved_per_window(self, plan: _Plan) -> int:
        """Elements one window moves up to the cut, plus its pasted cut map for the head."""
        cut = self.engine.clean_values[self.engine.graph.target]
        pasted = 0 if self.pooled else cut[0].numel()
        return self.engine.moved_per_window(plan) + pasted

    def patch_bytes(self, plan: _Plan) -> int:
        """Bytes of one window's patches, plus its pasted cut map when the head needs one."""
        cut = self.engine.clean_values[self.engine.graph.target]
        pasted = 0 if self.pooled else cut[0].numel() * cut.element_size()
        return self.engine.patch_bytes(plan) + pasted

    def _head_values(self, cut_input: Tensor, target: Any) -> Tensor:
        output = self.head(cut_input)
        if not isinstance(output, Tensor):
            raise IncrementalUnsupported(f"the model returns {type(output).__name__}, not a tensor")
        return select_output_target(output, target)

    def clean_targets(self, x: Tensor, target: Any) -> Tensor:
        """The target's clean value per image through the cut and the head, shape (N,)."""
        entries = per_example_targets(target, x.shape[0])
        self._entries = [entries[k] if entries is not None else target for k in range(len(x))]
        values = []
        for k, entry in enumerate(self._entries):
            cut_map = self.engine.run_clean(x[k : k + 1])
            start = cut_map.mean((2, 3)).view(self.pooled_shape) if self.pooled else cut_map
            values.append(self._head_values(start, entry))
        self._images = x
        return torch.cat(values)

    def occluded_values(
        self,
        fill: Tensor,
        window: tuple[int, int],
        stride: tuple[int, int],
        grid: tuple[int, int],
        batch: int,
    ) -> Iterator[Tensor]:
        """Occluded target values, image after image, in chunks of one head batch.

        Call :meth:`clean_targets` first; ``fill`` is the occluder content (N or 1, C, H, W).
        The patches run ``batch`` windows at a time; the head runs on as many windows at once
        as the device's budget holds (:func:`~dnnbrain_captum.attr._incremental.cost.
        batch_size` of the head input's bytes, at least ``batch``): a head with large weights
        (VGG's classifier: 411 MB) is then read once for many windows.
        """
        engine = self.engine
        device = self._images.device
        windows = grid[0] * grid[1]
        positions = torch.arange(windows, device=device)
        plan: _Plan | None = None
        for k, entry in enumerate(self._entries):
            cut_map = engine.run_clean(self._images[k : k + 1])
            if plan is None:
                plan = engine.plan(None, window, stride, grid)
            fill_image = fill[k if fill.shape[0] > 1 else 0].expand(
                engine.clean_values[0].shape[1:]
            )
            padded = engine._padded_clean(plan)
            per_window = cut_map[0, :, 0, 0].numel() if self.pooled else cut_map[0].numel()
            head_batch = max(
                batch, batch_size(per_window * cut_map.element_size(), device, windows)
            )
            pending: list[Tensor] = []
            for begin in range(0, windows, batch):
                index = positions[begin : begin + batch]
                rows, cols = index // grid[1], index % grid[1]
                patch = engine.occluded(plan, rows, cols, fill_image, padded)
                pending.append(self._cut_values(cut_map, plan, patch, rows, cols))
                if sum(len(p) for p in pending) >= head_batch or begin + batch >= windows:
                    start = pending[0] if len(pending) == 1 else torch.cat(pending)
                    pending = []
                    yield self._head_values(start, entry)

    def _cut_values(
        self, cut_map: Tensor, plan: _Plan, patch: Tensor, rows: Tensor, cols: Tensor
    ) -> Tensor:
        """The head's input for each window: the clean cut map with the window's patch
        pasted in, or the clean pooled vector corrected by the patch's change."""
        engine = self.engine
        device = patch.device
        channels, height, width = cut_map.shape[1:]
        flat = cut_map[0].permute(1, 2, 0).reshape(height * width, channels)
        spots = patch_index(plan.axes[engine.graph.target], rows, cols, width, device)
        b = patch.shape[0]
        if self.pooled:
            assert self.pooled_shape is not None
            covered = flat.index_select(0, spots).view(b, -1, channels)
            change = patch.sum((2, 3)) - covered.sum(1)
            pooled = cut_map.mean((2, 3))
            return (pooled + change / (height * width)).view(b, *self.pooled_shape[1:])
        maps = flat.repeat(b, 1)
        where = spots + torch.arange(b, device=device).repeat_interleave(spots.numel() // b) * (
            height * width
        )
        maps.index_copy_(0, where, patch.permute(0, 2, 3, 1).reshape(-1, channels))
        return maps.view(b, height, width, channels).permute(0, 3, 1, 2)
