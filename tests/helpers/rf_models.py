"""Receptive-field test helpers: small geometry nets and the gradient-support probe.

The probe (Araujo et al. 2019, "receptive fields as gradient support"): in a *linearised*
copy of a model (every parameter positive, activations and normalisations removed, max
pooling replaced by a sum over the same windows, squeeze-and-excitation gates removed) the
input gradient of a unit is a sum of positive terms over every path from a pixel to that
unit, so it is non-zero exactly on the pixels the unit can see. Its bounding box must equal
the theoretical box.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

# ----------------------------------------------------------------------------- test nets


class GeometryNet(nn.Module):
    """Asymmetric kernels/strides/padding, ceil_mode with padding, dilation, groups, a
    two-branch concatenation with different kernels, reflect padding, a crop, a channel-last
    Linear block, a residual addition, an uneven adaptive pooling and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, (3, 5), stride=(1, 2), padding=(1, 0))
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.conv2 = nn.Conv2d(4, 6, 3, dilation=2, groups=2, padding=1)
        self.branch_a = nn.Conv2d(6, 4, 1, stride=2)
        self.branch_b = nn.Conv2d(6, 4, 3, stride=2, padding=1)
        self.pool2 = nn.AvgPool2d((2, 3), stride=(2, 1), ceil_mode=True)
        self.depthwise = nn.Conv2d(8, 8, 3, groups=8)
        self.mix = nn.Linear(8, 8)
        self.head_pool = nn.AdaptiveAvgPool2d((3, 2))
        self.fc = nn.Linear(8 * 3 * 2, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(F.relu(self.conv1(x)))
        x = F.relu(self.conv2(x))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.pool2(x)
        x = F.pad(x, (1, 2, 0, 1), mode="reflect")
        x = self.depthwise(x)[:, :, 1:, :-1]
        x = x + self.mix(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.head_pool(x)
        return self.fc(torch.flatten(x, 1))


class GatedNet(nn.Module):
    """A squeeze-and-excitation gate (torchvision's) between two convolutions, and a
    hand-written gate ``x * sigmoid(mean)``."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops import SqueezeExcitation

        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.se = SqueezeExcitation(8, 4)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.se(F.silu(self.conv1(x)))
        x = self.conv2(x)
        gate = torch.sigmoid(x.mean((2, 3), keepdim=True))
        x = x * gate
        return self.head(x.mean((2, 3)))


class InterpolatingNet(nn.Module):
    """A convolution followed by ``nn.Upsample`` (nearest, x2): the grid is resampled."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.up = nn.Upsample(scale_factor=2.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.conv(x))


class RollingNet(nn.Module):
    """A convolution followed by ``torch.roll`` written in ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        return torch.roll(self.conv(x), shifts=1, dims=-1)


class SquareDetector(nn.Module):
    """One unit type that sums a ``side`` x ``side`` square inside a larger ``kernel`` field.

    ``conv`` is a 3→1 ``kernel`` x ``kernel`` convolution ('same' padding, stride 1) whose
    weights are 1 on the central ``side`` x ``side`` block and 0 elsewhere: its theoretical
    receptive field is ``kernel`` wide, the region it responds to is the central square.
    ``head`` (global average + Linear) makes it a classifier.
    """

    def __init__(self, kernel: int = 9, side: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, kernel, padding=kernel // 2, bias=False)
        self.head = nn.Linear(1, 2)
        margin = (kernel - side) // 2
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, margin : margin + side, margin : margin + side] = 1.0
            self.head.weight.fill_(1.0)
            self.head.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(x).mean((2, 3)))


def square_images(n: int, height: int, width: int, side: int, seed: int = 0) -> Tensor:
    """``n`` black (0) images of shape (3, height, width), each with a white (1) ``side`` x
    ``side`` square at a random position, at least ``side`` pixels from the borders."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 3, height, width)
    for k in range(n):
        top = int(torch.randint(side, height - 2 * side + 1, (1,), generator=generator))
        left = int(torch.randint(side, width - 2 * side + 1, (1,), generator=generator))
        images[k, :, top : top + side, left : left + side] = 1.0
    return images


class TinyUNet(nn.Module):
    """A small U-Net: strided and pooled encoder, a decoder that upsamples with a transposed
    convolution, bilinear and nearest interpolation and ``pixel_shuffle``, skip
    concatenations, a ``pixel_unshuffle`` and a ``torch.roll``/``flip`` on the way."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(3, 4, 3, padding=1)
        self.enc2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.bottom = nn.Conv2d(8, 8, 3, padding=1)
        self.up1 = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1)
        self.dec1 = nn.Conv2d(16, 8, 3, padding=1)
        self.up2 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec2 = nn.Conv2d(12, 8, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.unshuffle = nn.PixelUnshuffle(2)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.enc2(e1))
        b = F.relu(self.bottom(self.pool(e2)))
        d1 = F.relu(self.dec1(torch.cat([self.up1(b), e2], dim=1)))
        d2 = F.relu(self.dec2(torch.cat([self.up2(d1), e1], dim=1)))
        s = self.shuffle(d2)  # 2 channels at twice the size
        s = F.interpolate(torch.flip(s, dims=[-1]), size=(x.shape[-2], x.shape[-1]))
        u = self.unshuffle(torch.roll(s, shifts=(1, -2), dims=(2, 3)))
        return self.head(u)


# ----------------------------------------------------------------------------- the probe


def _linear_pool(
    x: Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    **_: Any,
) -> Tensor:
    """A sum over the same windows as ``max_pool2d`` (positive weights, same geometry)."""
    target = F.max_pool2d(x.detach(), kernel_size, stride, padding, dilation, ceil_mode).shape
    k = _two(kernel_size)
    s = _two(stride) if stride not in (None, [], ()) else k
    p, d = _two(padding), _two(dilation)
    extra = [
        max(0, (target[-2 + a] - 1) * s[a] + d[a] * (k[a] - 1) + 1 - (x.shape[-2 + a] + 2 * p[a]))
        for a in range(2)
    ]
    padded = F.pad(x, (p[1], p[1] + extra[1], p[0], p[0] + extra[0]))
    channels = x.shape[-3]
    weight = torch.ones(channels, 1, *k, dtype=x.dtype, device=x.device)
    out = F.conv2d(padded, weight, stride=s, dilation=d, groups=channels)
    return out[..., : target[-2], : target[-1]]


def _two(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


_IDENTITY = {
    "relu",
    "relu_",
    "relu6",
    "hardtanh",
    "hardtanh_",
    "gelu",
    "silu",
    "silu_",
    "hardswish",
    "hardswish_",
    "hardsigmoid",
    "sigmoid",
    "tanh",
    "leaky_relu",
    "elu",
    "selu",
    "mish",
    "dropout",
    "dropout2d",
    "batch_norm",
    "layer_norm",
    "group_norm",
    "instance_norm",
}


class _Linearise(TorchFunctionMode):
    """Activations, normalisations and dropout become identities; max pooling a window sum."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _IDENTITY:
            return args[0]
        if name in ("max_pool2d", "max_pool2d_with_indices"):
            return _linear_pool(*args, **kwargs)
        if name in ("adaptive_max_pool2d",):
            return F.adaptive_avg_pool2d(
                args[0], args[1] if len(args) > 1 else kwargs["output_size"]
            )
        return func(*args, **kwargs)


def linearised(model: nn.Module, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, list[str]]:
    """An eval-mode copy with positive weights (scaled 1/fan-in), no SE gates and
    uniform attention (query and key projections zeroed).

    Returns the copy and the paths of the removed gate modules.
    """
    from torchvision.ops import SqueezeExcitation

    copy_ = copy.deepcopy(model).to(dtype).eval()
    removed = []
    for path, module in list(copy_.named_modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, SqueezeExcitation):
                setattr(module, name, nn.Identity())
                removed.append(f"{path}.{name}" if path else name)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in copy_.modules():
            for p in module.parameters(recurse=False):
                p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) * 0.5 + 0.5)
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.div_(fan_in)
        for module in copy_.modules():
            _uniform_attention(module)
    return copy_, removed


def _uniform_attention(module: nn.Module) -> None:
    """Zero the query and key projections of an attention module: its softmax then weighs
    every attended token by its bias and mask alone. Positive weights everywhere else make
    deep copies' logits so large that float64 softmax underflows to exact zeros, which
    would hide attended tokens from the probe; which tokens are attended does not change."""
    from torchvision.models import maxvit, swin_transformer

    if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
        width = 2 * module.embed_dim
        module.in_proj_weight[:width] = 0.0
        if module.in_proj_bias is not None:
            module.in_proj_bias[:width] = 0.0
    projection = None
    if isinstance(
        module, (swin_transformer.ShiftedWindowAttention, swin_transformer.ShiftedWindowAttentionV2)
    ):
        projection = module.qkv
    elif isinstance(module, maxvit.RelativePositionalMultiHeadAttention):
        projection = module.to_qkv
    if projection is not None:
        width = 2 * projection.out_features // 3
        projection.weight[:width] = 0.0
        if projection.bias is not None:
            projection.bias[:width] = 0.0


def _support(grad: Tensor, threshold: float) -> Tensor:
    """Pixels whose gradient magnitude exceeds ``threshold`` times the largest one."""
    magnitude = grad.abs().sum(0)
    return magnitude > threshold * magnitude.max() if threshold else magnitude > 0


def _bbox(mask: Tensor) -> list[tuple[int, int]]:
    mask = mask.cpu()
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    if rows.numel() == 0:
        return [(0, 0), (0, 0)]
    return [(int(rows[0]), int(rows[-1]) + 1), (int(cols[0]), int(cols[-1]) + 1)]


def probe_units(n_h: int, n_w: int) -> list[tuple[int, int]]:
    """Corners, centre and near-corner units of an n_h × n_w map (distinct)."""
    picks = [
        (0, 0),
        (n_h - 1, n_w - 1),
        (0, n_w - 1),
        (n_h - 1, 0),
        (n_h // 2, n_w // 2),
        (min(1, n_h - 1), max(n_w - 2, 0)),
        (max(n_h - 2, 0), min(1, n_w - 1)),
    ]
    return list(dict.fromkeys(picks))


def gradient_support(
    model: nn.Module,
    input_size: tuple[int, int, int],
    table: Any,
    dtype: torch.dtype = torch.float64,
    device: Any = "cpu",
    threshold: float = 0.0,
) -> dict[str, list[tuple[Any, Any, Any]]]:
    """Probe every (spatial or flat) table entry of a linearised copy of ``model``.

    Returns ``{key: [(unit or None, probed box, box from the table), ...]}``; entries
    inside removed squeeze-and-excitation gates are not probed (they are gone). A pixel is in
    the support when its gradient is non-zero, or, with ``threshold`` > 0, larger than
    ``threshold`` times the largest gradient of that unit (Swin's shifted-window masks give
    the masked tokens a softmax weight below e**-100 ~ 4e-44 rather than exactly zero).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny convolutions: threads only add overhead
    try:
        return _gradient_support(model, input_size, table, dtype, device, threshold)
    finally:
        torch.set_num_threads(threads)


def _gradient_support(
    model: nn.Module,
    input_size: tuple[int, int, int],
    table: Any,
    dtype: torch.dtype,
    device: Any,
    threshold: float,
) -> dict[str, list[tuple[Any, Any, Any]]]:
    lin, removed = linearised(model, dtype)
    lin = lin.to(device)
    outputs: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    handles = []

    def make(path: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            k = counts.get(path, 0)
            counts[path] = k + 1
            tensor = (
                output
                if isinstance(output, Tensor)
                else next((o for o in output if isinstance(o, Tensor)), None)
                if isinstance(output, (tuple, list))
                else None
            )
            if tensor is not None:
                outputs[f"{path}:{k}" if k else path] = tensor
                if tensor is output:
                    # Later in-place operations (``out += identity``) must not rewrite it.
                    return tensor.clone()
            return None

        return hook

    for path, module in lin.named_modules():
        if path:
            handles.append(module.register_forward_hook(make(path)))
    batch = 7
    x = torch.ones(batch, *input_size, dtype=dtype, device=device, requires_grad=True)
    try:
        with _Linearise():
            lin(x)
    finally:
        for h in handles:
            h.remove()
    results: dict[str, list[tuple[Any, Any, Any]]] = {}
    aliases = set(table.aliases())
    for key in [k for k in table if k not in aliases]:
        if any(key == r or key.startswith(r + ".") for r in removed):
            continue
        entry = table[key]
        out = outputs[key]
        if not entry.spatial:
            (grad,) = torch.autograd.grad(out[0].sum(), x, retain_graph=True)
            results[key] = [(None, _bbox(_support(grad[0], threshold)), entry.box)]
            continue
        n_h, n_w = entry.output_size
        if entry.tokens is not None:
            axis, extra = entry.tokens
            assert axis == 1, key

            def pick(
                b: int, i: int, j: int, out: Tensor = out, extra: int = extra, n_w: int = n_w
            ) -> Tensor:
                return out[b, extra + i * n_w + j]
        elif tuple(out.shape[-2:]) == (n_h, n_w):

            def pick(b: int, i: int, j: int, out: Tensor = out) -> Tensor:
                return out[b, ..., i, j]
        elif out.dim() == 4 and tuple(out.shape[1:3]) == (n_h, n_w):

            def pick(b: int, i: int, j: int, out: Tensor = out) -> Tensor:
                return out[b, i, j]
        else:
            raise AssertionError(f"{key}: output shape {tuple(out.shape)} vs {(n_h, n_w)}")
        units = probe_units(n_h, n_w)
        total = sum(pick(b, i, j).sum() for b, (i, j) in enumerate(units))
        (grad,) = torch.autograd.grad(total, x, retain_graph=True)
        results[key] = [
            ((i, j), _bbox(_support(grad[b], threshold)), table.find_region(key, (i, j)))
            for b, (i, j) in enumerate(units)
        ]
    return results


def formula_box(entry: Any, unit: tuple[int, int]) -> list[tuple[int, int]]:
    """The unclipped Araujo box ``[i*j - P, i*j - P + r)`` per axis."""
    return [
        (
            unit[a] * entry.stride[a] - entry.padding[a],
            unit[a] * entry.stride[a] - entry.padding[a] + entry.size[a],
        )
        for a in range(2)
    ]


def disagreements(
    model: nn.Module,
    input_size: tuple[int, int, int],
    table: Any,
    dtype: torch.dtype = torch.float64,
    device: Any = "cpu",
    threshold: float = 0.0,
) -> list[str]:
    """Every probed unit whose gradient-support box differs from the table's box, and every
    interior unit (formula box inside the image) whose box differs from the formula."""
    problems = []
    _, height, width = input_size
    for key, rows in gradient_support(model, input_size, table, dtype, device, threshold).items():
        entry = table[key]
        for unit, probed, box in rows:
            if probed != box:
                problems.append(f"{key} unit {unit}: probe {probed} vs table {box}")
            if unit is not None and entry.size is not None:
                fb = formula_box(entry, unit)
                inside = (
                    fb[0][0] >= 0 and fb[1][0] >= 0 and fb[0][1] <= height and (fb[1][1] <= width)
                )
                if inside and fb != probed:
                    problems.append(f"{key} unit {unit}: probe {probed} vs formula {fb}")
    return problems
