"""Random small CNNs (a Hypothesis strategy) and a one-window-one-forward occlusion oracle.

A network is a list of steps, each reading earlier values by index: convolutions (random
kernel, stride, padding incl. ``"same"``, dilation, groups, padding mode), max/average
pooling (padding, dilation, ``ceil_mode``, ``count_include_pad``, ``divisor_override``), eval
batch norm with random statistics, activations (modules, functional and tensor-method forms,
in place or not), residual additions and channel concatenations. In-place steps write into the
value they read even when other steps read it too (what eager PyTorch does, and what the
incremental engine must refuse). The network ends with a ``head`` convolution over the last
value (the layer target) and, optionally, a class head (global average pool, linear) for
``layer=None`` targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor, nn

ACTIVATIONS = (
    "relu",
    "relu_inplace_module",
    "relu_inplace_functional",
    "relu_method_",
    "tanh",
    "leaky_relu_inplace",
    "gelu",
)


@dataclass
class Step:
    kind: str  # conv | pool | bn | act | add | cat
    inputs: tuple[int, ...]
    module: nn.Module | None = None
    option: str = ""


@dataclass
class NetSpec:
    steps: list[Step] = field(default_factory=list)
    classes: int = 0  # > 0: a class head after ``head``


class RandomCNN(nn.Module):
    """The network of a :class:`NetSpec` (see the module docstring)."""

    def __init__(self, spec: NetSpec, head_in: int, seed: int) -> None:
        super().__init__()
        self.kinds = [s.kind for s in spec.steps]
        self.inputs = [s.inputs for s in spec.steps]
        self.options = [s.option for s in spec.steps]
        self.layers = nn.ModuleList(s.module or nn.Identity() for s in spec.steps)
        self.head = nn.Conv2d(head_in, 3, 1)
        self.pool = nn.AdaptiveAvgPool2d(1) if spec.classes else None
        self.fc = nn.Linear(3, spec.classes) if spec.classes else None
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.2)
                    m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        values = [x]
        for kind, inputs, option, layer in zip(
            self.kinds, self.inputs, self.options, self.layers, strict=True
        ):
            values.append(_apply(kind, option, layer, [values[i] for i in inputs]))
        out = self.head(values[-1])
        if self.pool is not None and self.fc is not None:
            out = self.fc(torch.flatten(self.pool(out), 1))
        return out


def _apply(kind: str, option: str, layer: nn.Module, args: list[Tensor]) -> Tensor:
    if kind == "add":
        return args[0] + args[1]
    if kind == "cat":
        return torch.cat(args, 1)
    if kind != "act" or option in ("relu_inplace_module", "tanh", "gelu"):
        return layer(args[0])
    x = args[0]
    if option == "relu":
        return F.relu(x)
    if option == "relu_inplace_functional":
        return F.relu(x, inplace=True)
    if option == "relu_method_":
        return x.relu_()
    return F.leaky_relu(x, 0.1, inplace=True)


def _conv(draw: Any, channels: int) -> nn.Conv2d:
    k = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2))
    groups = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0]))
    out = groups * draw(st.integers(1, 3))
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    padding: int | str = draw(st.integers(0, k))
    # ("same" with an even kernel and an odd dilation warns about a padded copy.)
    if stride == 1 and (k % 2 == 1 or dilation % 2 == 0) and draw(st.booleans()):
        padding = "same"
    return nn.Conv2d(channels, out, k, stride, padding, dilation, groups, padding_mode=mode)


def _pool(draw: Any) -> nn.Module:
    k = draw(st.integers(2, 3))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, k // 2))
    ceil = draw(st.booleans())
    if draw(st.booleans()):
        return nn.MaxPool2d(k, stride, padding, draw(st.integers(1, 2)), ceil_mode=ceil)
    return nn.AvgPool2d(
        k,
        stride,
        padding,
        ceil_mode=ceil,
        count_include_pad=draw(st.booleans()),
        divisor_override=draw(st.sampled_from([None, None, 2])),
    )


def _act(option: str) -> nn.Module | None:
    return {
        "relu_inplace_module": nn.ReLU(inplace=True),
        "tanh": nn.Tanh(),
        "gelu": nn.GELU(),
    }.get(option)


def _shapes(spec: NetSpec, size: tuple[int, int]) -> list[torch.Size] | None:
    """Shapes of every value on a zero image, or None when the network is not valid there."""
    values = [torch.zeros(1, 3, *size)]
    try:
        with torch.no_grad():
            for step in spec.steps:
                out = _apply(
                    step.kind,
                    step.option,
                    (step.module or nn.Identity()).eval(),
                    [values[i].clone() for i in step.inputs],
                )
                if min(out.shape[-2:]) < 1:
                    return None
                values.append(out)
    except RuntimeError:
        return None
    return [v.shape for v in values]


@st.composite
def random_cnns(draw: Any, size: tuple[int, int], classes: bool = False) -> RandomCNN:
    """A random valid network for ``size`` images (3 channels)."""
    spec = NetSpec(classes=draw(st.integers(2, 4)) if classes else 0)
    shapes = [torch.Size((1, 3, *size))]
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["conv", "conv", "pool", "bn", "act", "act", "add", "cat"]))
        last = len(shapes) - 1
        # Mostly the newest value, sometimes an older one (branches).
        source = draw(st.sampled_from([last, last, max(last - 1, 0), max(last - 2, 0)]))
        channels = shapes[source][1]
        if kind == "conv":
            step = Step(kind, (source,), _conv(draw, channels))
        elif kind == "pool":
            step = Step(kind, (source,), _pool(draw))
        elif kind == "bn":
            step = Step(kind, (source,), nn.BatchNorm2d(channels))
        elif kind == "act":
            # (In place on the image itself is refused too; tested in test_occlusion_applicability.)
            option = draw(st.sampled_from(ACTIVATIONS if source else ACTIVATIONS[:1]))
            step = Step(kind, (source,), _act(option), option)
        else:
            same = [
                i
                for i, s in enumerate(shapes)
                if i != source
                and s[-2:] == shapes[source][-2:]
                and (kind == "cat" or s == shapes[source])
            ]
            if not same:
                continue
            step = Step(kind, (source, draw(st.sampled_from(same))))
        spec.steps.append(step)
        found = _shapes(spec, size)
        if found is None:
            spec.steps.pop()
            continue
        shapes = found
    if not spec.steps:
        spec.steps.append(Step("conv", (0,), nn.Conv2d(3, 2, 1)))
        shapes = _shapes(spec, size) or shapes
    return RandomCNN(spec, shapes[-1][1], draw(st.integers(0, 2**16)))


def brute_force_occlusion(
    model: nn.Module,
    layer: nn.Module | None,
    x: Tensor,
    target: Any,
    window: tuple[int, int],
    stride: tuple[int, int],
    fill: Tensor,
    reduction: str = "mean",
) -> Tensor:
    """Original − occluded value, one window of one image per whole forward pass.

    ``target`` is a channel, a ``(c, i, j)`` unit (with a layer) or a class index (without);
    ``fill`` is the occluder content (1 or N, C, H, W). Returns (N, rows, cols).
    """
    captured: list[Tensor] = []

    def keep(module: nn.Module, args: Any, out: Tensor) -> None:
        if not captured:
            captured.append(out.detach().clone())

    def value(image: Tensor) -> float:
        captured.clear()
        out = model(image[None])
        out = captured[0] if layer is not None else out
        if isinstance(target, tuple):
            return float(out[0][target])
        if layer is None:
            return float(out[0, target])
        channel = out[0, target]
        return float({"mean": channel.mean, "max": channel.max, "sum": channel.sum}[reduction]())

    handle = layer.register_forward_hook(keep) if layer is not None else None
    rows = (x.shape[-2] - window[0]) // stride[0] + 1
    cols = (x.shape[-1] - window[1]) // stride[1] + 1
    result = torch.zeros(x.shape[0], rows, cols, dtype=torch.float64)
    try:
        with torch.no_grad():
            for k in range(x.shape[0]):
                original = value(x[k].clone())
                content = fill[k if fill.shape[0] > 1 else 0].expand(x.shape[1:])
                for r in range(rows):
                    for c in range(cols):
                        image = x[k].clone()
                        box = (slice(None), slice(r * stride[0], r * stride[0] + window[0]))
                        box = (*box, slice(c * stride[1], c * stride[1] + window[1]))
                        image[box] = content[box]
                        result[k, r, c] = original - value(image)
    finally:
        if handle is not None:
            handle.remove()
    return result
