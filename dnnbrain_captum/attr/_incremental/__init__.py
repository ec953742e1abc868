"""Exact incremental inference for occluder discrepancy maps.

An occluder changes only the units whose receptive field overlaps it, so at every layer
between the image and the target layer only a small patch of the activation differs from the
clean (unoccluded) activation. This module computes, for a batch of same-size windows, only
those patches, reading the margin each layer's kernel needs from clean activations cached
once per image (incremental inference; Nakandala, Kumar & Papakonstantinou, "Incremental and
approximate inference for faster occlusion-based deep CNN explanations", SIGMOD 2019).

The model is traced with :mod:`torch.fx` (once per model and question: ``cache.py``); the
path from the input to the target layer must be made of operations whose spatial geometry the
geometry core (:mod:`dnnbrain_captum._spatial`, shared with the receptive-field tracer) knows:

* its sliding windows, as modules or functional calls: ``nn.Conv2d`` (any stride, padding
  incl. ``"same"``, dilation, groups; zero padding mode), max / average / power-average
  pooling (padding, dilation, ``ceil_mode``, ``count_include_pad``, ``divisor_override``) and
  any operation registered there later; adaptive pools that keep the size,
* its element-wise operations (activations as modules, functions or tensor methods, in place
  or not, arithmetic with numbers, comparisons), ``nn.BatchNorm2d`` in eval mode with running
  statistics, ``nn.Identity`` and dropout in eval mode,
* element-wise combinations of same-shape paths (``+``, ``-``, ``*``, ``/``, ``maximum``,
  ``where`` …) and concatenations along channels.

Anything else raises :class:`IncrementalUnsupported` with the reason, and the caller falls
back to the full recompute. The result equals the full recompute up to floating-point
rounding (summation order inside the convolutions differs).

Every per-layer patch has the same size for all windows of a batch: the largest affected
region over all window positions, its start clamped so that it stays inside the map. A layer's
input region is the producer's clean map (padded with the op's padding value) with the
producer's patch pasted in (a position-wise operation, 1×1 stride-1 convolutions included,
reads its input's patch as it is). A stride-1 ungrouped convolution may instead be computed as
clean output + the convolution of the input's change (zero outside the input patch), i.e. a
transposed convolution of that change with the flipped kernel, whose cost scales with the
input patch; the plan takes it where the cost model says it is cheaper (``planning.py``).
Kernels are kept channels-last like the patches; a batch holds as many windows as the peak
of one window's live patches allows (``cost.py``).

Each operation's footprint and the interval arithmetic come from the geometry core; a test
registers a new window there and sees both clients follow it (``tests/test_spatial_core.py``).
"""

from dnnbrain_captum.attr._incremental.engine import IncrementalOcclusion
from dnnbrain_captum.attr._incremental.nodes import IncrementalUnsupported
from dnnbrain_captum.attr._incremental.output import OutputOcclusion

__all__ = ["IncrementalOcclusion", "IncrementalUnsupported", "OutputOcclusion"]
