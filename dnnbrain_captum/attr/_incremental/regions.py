"""Incremental scoring of local region changes: one region of an image replaced at a time.

The minimal-parcel removal search scores, in each round, the current image with one kept parcel
replaced by the fill. Such a candidate differs from the current image only inside the parcel's
bounding box, so it is an occlusion window with its own content: the clean activations of the
current image are computed once per round (:meth:`IncrementalOcclusion.run_clean`), and each
candidate is the window at its box's origin whose input patch is the current image with the
parcel filled, cropped to the box (``occluded(..., in_patch=...)``). The target layer's patch
is pasted into the clean target map, which is reduced as the full path reduces it.

Windows are planned on the image grid with stride 1; candidates are grouped by their box size
rounded up to :data:`QUANTUM` pixels (one plan, and one batched call, per group). A group is
computed incrementally only where the cost model of the occlusion sweep
(:func:`~dnnbrain_captum.attr._incremental.cost.incremental_pays`) expects it to be faster, and
a round only when the groups that pay save more than the clean pass costs; every other
candidate goes to the caller's full path. The values equal the full path's up to
floating-point rounding.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from dnnbrain_captum._utils.targets import per_example_targets, reduce_per_example
from dnnbrain_captum.attr._incremental.cost import (
    CPU_PATCH_BYTES,
    batch_size,
    incremental_pays,
    predicted_costs,
)
from dnnbrain_captum.attr._incremental.engine import IncrementalOcclusion, _target_of
from dnnbrain_captum.attr._incremental.fallback import refuse_or_fall_back
from dnnbrain_captum.attr._incremental.nodes import IncrementalUnsupported
from dnnbrain_captum.attr._incremental.planning import _Plan

__all__ = ["QUANTUM", "ParcelRemovals", "parcel_boxes"]

logger = logging.getLogger(__name__)

QUANTUM = 8  # box sizes are rounded up to a multiple of this many pixels (fewer plans)
# What one more engine call costs beyond its arithmetic, in multiply-adds (index building,
# gathers and small kernels of every layer): for AlexNet conv5 on a 2-thread CPU, a call's
# time grew linearly with its windows (4 and 16 windows of 32-80 px) from about 1-2 ms, the
# time of some 50 M multiply-adds of batched patches.
CALL_COST = 50_000_000
MERGE_SLACK = 0.25  # a candidate shares a larger window only if that adds < 25 % arithmetic
METHODS = ("auto", "incremental", "full")


def parcel_boxes(labels: Tensor, count: int) -> Tensor:
    """Bounding box of every parcel: (top, left, height, width) per label, shape (count, 4).

    A label without pixels gets an empty box (height and width 0).

    Examples
    --------
    >>> parcel_boxes(torch.tensor([[0, 0, 1], [2, 2, 1]]), 3).tolist()
    [[0, 0, 1, 2], [0, 2, 2, 1], [1, 0, 1, 2]]
    """
    h, w = labels.shape
    flat = labels.reshape(-1).long()
    rows = torch.arange(h, device=labels.device).repeat_interleave(w)
    cols = torch.arange(w, device=labels.device).repeat(h)
    big = max(h, w)
    boxes = []
    for coord in (rows, cols):
        low = torch.full((count,), big, dtype=torch.long, device=labels.device)
        high = torch.full((count,), -1, dtype=torch.long, device=labels.device)
        low.scatter_reduce_(0, flat, coord, "amin")
        high.scatter_reduce_(0, flat, coord, "amax")
        boxes.append((low.clamp_max(big - 1), (high - low + 1).clamp_min(0)))
    (top, height), (left, width) = boxes
    return torch.stack([top, left, height, width], 1)


class _Costs(NamedTuple):
    """One window's costs from the engine's plan (see ``engine.IncrementalOcclusion``)."""

    incremental: int  # multiply-adds of the incremental patches
    full: int  # multiply-adds of the full recompute
    moved: int  # elements gathered and pasted
    elements: tuple[int, int]  # output elements written (incremental, full)
    operations: int  # incremental operations per batch
    patch_bytes: int  # peak bytes of one window's patches


class ParcelRemovals:
    """Target values of parcel removals, computed incrementally from the current image.

    Called as ``removals(example, kept, members)`` by the removal search: the values of the
    image of ``example`` keeping the parcels ``kept`` (bool, (K,)) with each one of ``members``
    removed in turn, and which of them it computed (the rest go to the full path).

    Parameters
    ----------
    model : nn.Module
        The model (traced with torch.fx).
    layer : nn.Module
        The target layer; its output must be read channels-first.
    x : Tensor of shape (N, C, H, W)
        The images.
    fill : Tensor
        What removed pixels show, broadcastable to ``x`` with batch size 1 or N.
    labels : Tensor of shape (N, H, W), long
        Parcel labels, 0 .. K_e − 1 per image.
    target : Any
        A channel or a unit ``(c, i, j)`` of the layer, or one per example.
    criterion : str
        How a channel's map becomes one value (``reduce_per_example``); not used for units.
    original : Tensor of shape (N,)
        The target's value on the images by the full path (checks the traced graph).
    method : {"auto", "incremental"}
        ``"incremental"`` computes every candidate incrementally (no cost rule) and raises
        ``ValueError`` where it cannot; ``"auto"`` follows the cost rule and gives every
        candidate to the full path from the first failure on.
    batch : int
        Most candidates per engine call.

    Raises
    ------
    IncrementalUnsupported
        When the engine cannot serve this model, layer or target.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module,
        x: Tensor,
        fill: Tensor,
        labels: Tensor,
        target: Any,
        criterion: str,
        original: Tensor,
        method: str,
        batch: int,
    ) -> None:
        if any(module.training for module in model.modules()):
            raise IncrementalUnsupported("the model is in training mode")
        if callable(target) and not isinstance(target, Tensor):
            raise IncrementalUnsupported("the target is a callable")
        n = x.shape[0]
        entries = per_example_targets(target, n)
        self.targets = [
            _target_of(entries[e] if entries else target, x.shape[1:]) for e in range(n)
        ]
        for channel, unit in self.targets:
            if channel < 0 or (unit is not None and min(unit) < 0):
                raise IncrementalUnsupported("negative target indices")
        self.engine = IncrementalOcclusion(model, layer)
        self.x, self.labels, self.criterion = x, labels, criterion
        self.fill = fill.expand(fill.shape[0], *x.shape[1:])
        self.original, self.method, self.batch = original, method, batch
        cpu_labels = labels.cpu()
        self.boxes = [parcel_boxes(cpu_labels[e], int(cpu_labels[e].max()) + 1) for e in range(n)]
        self.checked: set[int] = set()
        self._padded_cache: dict[tuple[int, Any], dict[tuple[int, int], Tensor]] = {}
        self.disabled = False
        # candidates by each path, clean passes, and the multiply-adds of the incremental
        # candidates: as computed, and as the full path would have computed them
        self.stats = {"incremental": 0, "full": 0, "clean": 0, "macs": 0, "full_macs": 0}
        self._cost_cache: dict[tuple[int, tuple[int, int]], _Costs] = {}
        self._clean_check(0, x[:1])

    # -- the search's entry point -------------------------------------------------------------
    def __call__(self, example: int, kept: Tensor, members: Tensor) -> tuple[Tensor, Tensor]:
        """Values of the removals of ``members`` from ``kept`` (M,), and which were computed."""
        values = torch.zeros(members.shape[0], dtype=self.original.dtype)
        done = torch.zeros(members.shape[0], dtype=torch.bool)
        if not self.disabled and members.numel():
            try:
                self._removals(example, kept, members, values, done)
            except Exception as reason:  # noqa: BLE001 - whatever went wrong, the full path is exact
                refuse_or_fall_back(
                    reason, self.method, logger, "parcel removals by the full path from now on"
                )
                self.disabled = True
                done[:] = False
        self.stats["incremental"] += int(done.sum())
        self.stats["full"] += int((~done).sum())
        return values, done

    # -- one round of one example -------------------------------------------------------------
    def _removals(
        self, example: int, kept: Tensor, members: Tensor, values: Tensor, done: Tensor
    ) -> None:
        size = (self.x.shape[-2], self.x.shape[-1])
        channel, _ = self.targets[example]
        boxes = self.boxes[example][members.cpu()]
        if not self.engine.clean_values:
            self.engine.run_clean(self.x[:1])  # the shapes, for the plans
        groups = self._paying(channel, self._groups(channel, boxes, size), size)
        if not groups:
            return
        device = self.x.device
        current = self._current(example, kept.to(device))
        target_map = self._clean_check(example, current[None], kept)
        for window, index in groups:
            values[index] = (
                self._group(example, current, target_map, members[index], boxes[index], window)
                .to(values.dtype)
                .cpu()
            )
            done[index] = True

    def _groups(
        self, channel: int, boxes: Tensor, size: tuple[int, int]
    ) -> list[tuple[tuple[int, int], Tensor]]:
        """Candidates grouped under shared window sizes (one engine call per group).

        Largest boxes first, each candidate joins the first group whose window holds its box
        when the extra arithmetic (the group's window against its own, rounded up to
        :data:`QUANTUM`) costs less than a call of its own (:data:`CALL_COST`) and less than
        :data:`MERGE_SLACK` of its own arithmetic.
        """
        windows = [tuple(w) for w in _rounded(boxes[:, 2:], size).tolist()]
        order = sorted(range(len(windows)), key=lambda j: -windows[j][0] * windows[j][1])
        groups: list[tuple[tuple[int, int], list[int]]] = []
        for j in order:
            own = windows[j]
            cost = self._costs(channel, own, size).incremental  # type: ignore[arg-type]
            for window, members in groups:
                fits = window[0] >= own[0] and window[1] >= own[1]
                extra = self._costs(channel, window, size).incremental - cost
                if fits and extra < min(CALL_COST, MERGE_SLACK * cost):
                    members.append(j)
                    break
            else:
                groups.append((own, [j]))  # type: ignore[arg-type]
        return [(w, torch.tensor(sorted(m), dtype=torch.long)) for w, m in groups]

    def _paying(
        self,
        channel: int,
        groups: list[tuple[tuple[int, int], Tensor]],
        size: tuple[int, int],
    ) -> list[tuple[tuple[int, int], Tensor]]:
        """The groups to compute incrementally in this round (the cost rule).

        A group pays when :func:`incremental_pays` says so for its window (the occlusion cost
        model: arithmetic, written and moved elements, operations per batch); the round pays
        when the groups that pay are predicted to save more (less :data:`CALL_COST` per call)
        than the clean pass costs (about one full forward).
        """
        if self.method == "incremental":
            return groups
        device = self.x.device
        chosen, saved, clean = [], 0.0, 0.0
        for window, index in groups:
            cost = self._costs(channel, window, size)
            batch = min(
                self.batch,
                batch_size(cost.patch_bytes, device, index.shape[0], CPU_PATCH_BYTES),
            )
            terms = (cost.moved, cost.operations / batch, cost.elements)
            full_time, incremental_time = predicted_costs(cost.incremental, cost.full, *terms)
            clean = max(clean, full_time)
            if incremental_pays(cost.incremental, cost.full, device, *terms):
                chosen.append((window, index))
                saved += index.shape[0] * (full_time - incremental_time) - CALL_COST
        return chosen if saved > clean else []

    def _costs(self, channel: int, window: tuple[int, int], size: tuple[int, int]) -> _Costs:
        """What one candidate's window costs on each path (from the engine's plan)."""
        key = (channel, window)
        if key not in self._cost_cache:
            plan = self._plan(channel, window, size)
            incremental, full = self.engine.macs_per_window(plan)
            self._cost_cache[key] = _Costs(
                incremental,
                full,
                self.engine.moved_per_window(plan),
                self.engine.elements_per_window(plan),
                len(plan.order),
                self.engine.patch_bytes(plan),
            )
        return self._cost_cache[key]

    def _plan(self, channel: int, window: tuple[int, int], size: tuple[int, int]) -> _Plan:
        grid = (size[0] - window[0] + 1, size[1] - window[1] + 1)
        return self.engine.plan([channel], window, (1, 1), grid)

    def _current(self, example: int, kept: Tensor) -> Tensor:
        """The image of ``example`` showing the kept parcels, (C, H, W)."""
        keep = kept[self.labels[example]]
        return torch.where(keep[None], self.x[example], self._fill(example))

    def _fill(self, example: int) -> Tensor:
        return self.fill[example if self.fill.shape[0] > 1 else 0]

    def _clean_check(self, example: int, image: Tensor, kept: Tensor | None = None) -> Tensor:
        """Clean pass on ``image`` (1, C, H, W): the target map of the target's channel.

        On the first pass over an example's whole image, the target's value must equal the
        full path's (``original``): otherwise the traced graph is not the model.
        """
        channel, unit = self.targets[example]
        target_map = self.engine.run_clean(image)[0, channel]
        self._padded_cache = {}
        self.stats["clean"] += 1
        whole = kept is None or bool(kept.all())
        if example not in self.checked and whole:
            value = _reduce(target_map[None], self.criterion, unit)[0]
            expected = self.original[example]
            scale = max(abs(float(expected)), 1e-30)
            if not torch.allclose(value, expected, rtol=1e-4, atol=1e-5 * scale):
                raise IncrementalUnsupported(
                    "the traced graph does not reproduce the model's value at the layer"
                )
            self.checked.add(example)
        return target_map

    def _padded(self, plan: _Plan) -> dict[tuple[int, int], Tensor]:
        """The engine's padded clean maps for ``plan``, shared by the plans of a round.

        An operation's entries depend on the clean pass, the target channel (fixed within a
        round) and, per input, on the padding its edges need; the engine computes only the
        entries not held yet (through a copy of the plan restricted to those operations).
        """
        keys: dict[int, Any] = {k: "delta" for k in plan.delta}
        for k in plan.order:
            if k not in plan.delta:
                keys[k] = tuple(
                    None
                    if e is None
                    else (e[0].pad_before, e[0].pad_after, e[1].pad_before, e[1].pad_after)
                    for e in plan.edges[k]
                )
        missing = [k for k, key in keys.items() if (k, key) not in self._padded_cache]
        if missing:
            proxy = dataclasses.replace(
                plan,
                order=[k for k in plan.order if k in missing and k not in plan.delta],
                delta={k: v for k, v in plan.delta.items() if k in missing},
            )
            computed = self.engine._padded_clean(proxy)
            for k in missing:
                self._padded_cache[(k, keys[k])] = {
                    key: value for key, value in computed.items() if key[0] == k
                }
        padded: dict[tuple[int, int], Tensor] = {}
        for k, key in keys.items():
            padded.update(self._padded_cache[(k, key)])
        return padded

    def _group(
        self,
        example: int,
        current: Tensor,
        target_map: Tensor,
        members: Tensor,
        boxes: Tensor,
        window: tuple[int, int],
    ) -> Tensor:
        """Values of the removals of ``members`` (same rounded box size ``window``), (B,)."""
        engine = self.engine
        channel, unit = self.targets[example]
        h, w = current.shape[-2:]
        plan = self._plan(channel, window, (h, w))
        padded = self._padded(plan)
        device = current.device
        rows = boxes[:, 0].clamp_max(h - window[0]).to(device)
        cols = boxes[:, 1].clamp_max(w - window[1]).to(device)
        fill = self._fill(example)
        cost = self._costs(channel, window, (h, w))
        step = min(
            self.batch, batch_size(cost.patch_bytes, device, members.shape[0], CPU_PATCH_BYTES)
        )
        ah, aw = plan.axes[engine.graph.target]
        out = []
        for start in range(0, members.shape[0], step):
            r, c = rows[start : start + step], cols[start : start + step]
            crop = _crops([current, fill, self.labels[example][None]], r, c, window)
            removed = crop[2][:, 0] == members[start : start + step].to(device)[:, None, None]
            in_patch = torch.where(removed[:, None], crop[1], crop[0])
            patch = engine.occluded(plan, r, c, fill, padded, in_patch=in_patch)[:, 0]
            maps = _pasted(target_map, patch, ah.start.to(device)[r], aw.start.to(device)[c])
            out.append(_reduce(maps, self.criterion, unit))
        self.stats["macs"] += members.shape[0] * cost.incremental
        self.stats["full_macs"] += members.shape[0] * cost.full
        return torch.cat(out)


def _rounded(sizes: Tensor, size: tuple[int, int]) -> Tensor:
    """Box sizes (B, 2) rounded up to a multiple of :data:`QUANTUM`, at most the image size."""
    up = torch.div(sizes.clamp_min(1) + QUANTUM - 1, QUANTUM, rounding_mode="floor") * QUANTUM
    return torch.minimum(up, torch.tensor(size))


def _crops(
    images: Sequence[Tensor], rows: Tensor, cols: Tensor, window: tuple[int, int]
) -> list[Tensor]:
    """Each (C, H, W) image cropped at the boxes (rows, cols) of size ``window``: (B, C, h, w)."""
    h, w = window
    spots = list(zip(rows.tolist(), cols.tolist(), strict=True))
    return [torch.stack([image[:, r : r + h, c : c + w] for r, c in spots]) for image in images]


def _pasted(clean: Tensor, patch: Tensor, top: Tensor, left: Tensor) -> Tensor:
    """Copies of the clean map (H, W) with each patch (B, h, w) pasted at (top, left): (B, H, W)."""
    b, ph, pw = patch.shape
    height, width = clean.shape
    device = patch.device
    rr = top[:, None] + torch.arange(ph, device=device)
    cc = left[:, None] + torch.arange(pw, device=device)
    spots = (rr[:, :, None] * width + cc[:, None, :]).reshape(b, -1)
    maps = clean.reshape(-1).expand(b, -1).clone()
    maps.scatter_(1, spots, patch.reshape(b, -1))
    return maps.view(b, height, width)


def _reduce(maps: Tensor, criterion: str, unit: tuple[int, int] | None) -> Tensor:
    if unit is not None:
        return maps[:, unit[0], unit[1]]
    return reduce_per_example(maps, criterion)
