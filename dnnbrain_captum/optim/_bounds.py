"""Certified upper bounds of a convolution's responses over a whole box of images.

Activation maximisation cannot make a channel fire if no image does: this module proves it.
For a chain of ``nn.Conv2d``, ``nn.ReLU`` and ``nn.MaxPool2d`` modules (the ``features`` of an
AlexNet-shaped CNN such as the bundled digits model) and every image in the box
``[low, high]^(C×H×W)``, :func:`conv_upper_bounds` returns an upper bound of every unit of
the last convolution's output (its pre-activation). The bound is a linear relaxation computed
backwards from each unit (CROWN: Zhang et al. 2018, "Efficient Neural Network Robustness
Certification with General Activation Functions"), with every intermediate pre-activation
bounded the same way (and intersected with interval arithmetic):

* a convolution is exact (its transpose carries the coefficients back);
* a ReLU with input bounds ``l < 0 < u`` is bounded above by the chord ``u (z − l) / (u − l)``
  and below by ``0`` or ``z`` (whichever is closer on the interval, CROWN's adaptive choice);
* a max-pool window is bounded below by the input with the largest lower bound and above by
  the chord of ``max(z_j, U')`` in ``z_j`` (``z_j``: the input with the largest upper bound,
  ``U'``: the other inputs' largest upper bound; exact when ``l_j >= U'``);
* at the input, a linear function's maximum over the box is taken coefficient by coefficient.

Every step is an inequality that holds for every image in the box, so the result is a
guarantee (up to floating-point rounding; the computation runs in float64 and the margin to 0
is reported). It is not tight: a channel with a positive bound may still never fire.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["conv_upper_bounds"]

_CHUNK = 512


def _check_chain(modules: Sequence[nn.Module]) -> None:
    if not modules or not isinstance(modules[-1], nn.Conv2d):
        raise ValueError("the chain must end with an nn.Conv2d (the bounded pre-activation)")
    for module in modules:
        if isinstance(module, nn.Conv2d):
            if (
                module.groups != 1
                or module.padding_mode != "zeros"
                or isinstance(module.padding, str)
            ):
                raise ValueError(
                    f"unsupported convolution {module}: groups=1, numeric zero padding"
                )
        elif isinstance(module, nn.MaxPool2d):
            size, stride = module.kernel_size, module.stride
            if not (
                size in (2, (2, 2))
                and stride in (2, (2, 2))
                and module.padding in (0, (0, 0))
                and module.dilation in (1, (1, 1))
                and not module.ceil_mode
            ):
                raise ValueError(f"unsupported max-pool {module}: only 2×2, stride 2, no padding")
        elif not isinstance(module, nn.ReLU):
            raise ValueError(
                f"unsupported module {type(module).__name__}: Conv2d, ReLU and MaxPool2d only"
            )


def _conv_back(coef: Tensor, conv: nn.Conv2d, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Coefficients on a convolution's input and the constant its bias adds, per spec."""
    weight = conv.weight.to(coef.dtype)
    bias = conv.bias.to(coef.dtype) if conv.bias is not None else None
    constant = (coef.sum((2, 3)) @ bias) if bias is not None else coef.new_zeros(coef.shape[0])
    back = torch.nn.grad.conv2d_input(
        (coef.shape[0], *shape), weight, coef, conv.stride, conv.padding, conv.dilation
    )
    return back, constant


def _relu_back(coef: Tensor, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """Upper relaxation of ``coef · relu(z)`` for ``z`` in ``[low, high]``."""
    unstable = (low < 0) & (high > 0)
    width = (high - low).clamp(min=1e-30)
    upper_slope = torch.where(high <= 0, 0.0, torch.where(low >= 0, 1.0, high / width))
    upper_offset = torch.where(unstable, -upper_slope * low, 0.0)
    lower_slope = torch.where(high <= 0, 0.0, torch.where(low >= 0, 1.0, (high > -low).to(low)))
    positive, negative = coef.clamp(min=0), coef.clamp(max=0)
    back = positive * upper_slope + negative * lower_slope
    return back, (positive * upper_offset).flatten(1).sum(1)


def _windows(x: Tensor) -> Tensor:
    """(..., C, H, W) → (..., C, H/2, W/2, 4): the 2×2 max-pool windows."""
    *lead, c, h, w = x.shape
    x = x.reshape(*lead, c, h // 2, 2, w // 2, 2).movedim(-3, -2)
    return x.reshape(*lead, c, h // 2, w // 2, 4)


def _unwindows(x: Tensor, h: int, w: int) -> Tensor:
    *lead, c, _, _, _ = x.shape
    x = x.reshape(*lead, c, h // 2, w // 2, 2, 2).movedim(-2, -3)
    return x.reshape(*lead, c, h, w)


def _pool_back(coef: Tensor, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """Upper relaxation of ``coef · maxpool(z)`` for ``z`` in ``[low, high]`` (shape C, H, W)."""
    h, w = low.shape[-2:]
    lw, hw = _windows(low), _windows(high)
    top2 = hw.topk(2, dim=-1)
    j = top2.indices[..., :1]
    high_j, others = top2.values[..., 0], top2.values[..., 1]
    low_j = lw.gather(-1, j)[..., 0]
    exact = low_j >= others
    slope = torch.where(exact, 1.0, (high_j - others) / (high_j - low_j).clamp(min=1e-30))
    offset = torch.where(exact, 0.0, others - slope * low_j)
    pick_upper = torch.zeros_like(hw).scatter(-1, j, 1.0) * slope[..., None]
    pick_lower = torch.zeros_like(lw).scatter(-1, lw.argmax(-1, keepdim=True), 1.0)
    positive, negative = coef.clamp(min=0), coef.clamp(max=0)
    back = positive[..., None] * pick_upper + negative[..., None] * pick_lower
    return _unwindows(back, h, w), (positive * offset).flatten(1).sum(1)


def _upper(
    coef: Tensor,
    modules: Sequence[nn.Module],
    shapes: Sequence[tuple[int, ...]],
    bounds: dict[int, tuple[Tensor, Tensor]],
    box: tuple[float, float],
) -> Tensor:
    """Upper bound of ``coef · (output of modules)`` over the input box, one per spec (S,)."""
    total = coef.new_zeros(coef.shape[0])
    for k in range(len(modules) - 1, -1, -1):
        module = modules[k]
        if isinstance(module, nn.Conv2d):
            coef, constant = _conv_back(coef, module, shapes[k])
        elif isinstance(module, nn.ReLU):
            coef, constant = _relu_back(coef, *bounds[k])
        else:
            coef, constant = _pool_back(coef, *bounds[k])
        total = total + constant
    low, high = box
    return total + (coef.clamp(min=0) * high + coef.clamp(max=0) * low).flatten(1).sum(1)


def _interval(module: nn.Module, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """Interval arithmetic through one module (shapes (C, H, W))."""
    if isinstance(module, nn.Conv2d):
        weight = module.weight.to(low.dtype)
        bias = module.bias.to(low.dtype) if module.bias is not None else None
        centre, radius = (high + low) / 2, (high - low) / 2
        mid = F.conv2d(centre[None], weight, bias, module.stride, module.padding)[0]
        spread = F.conv2d(radius[None], weight.abs(), None, module.stride, module.padding)[0]
        return mid - spread, mid + spread
    if isinstance(module, nn.ReLU):
        return low.clamp(min=0), high.clamp(min=0)
    return F.max_pool2d(low[None], 2)[0], F.max_pool2d(high[None], 2)[0]


def conv_upper_bounds(
    modules: Sequence[nn.Module],
    input_shape: tuple[int, int, int],
    value_range: tuple[float, float] = (0.0, 1.0),
    chunk: int = _CHUNK,
) -> Tensor:
    """Certified upper bounds of the last convolution's units over every image in a box.

    Parameters
    ----------
    modules : sequence of nn.Module
        ``nn.Conv2d`` (groups 1, zero padding), ``nn.ReLU`` and 2×2 stride-2 ``nn.MaxPool2d``
        modules applied in order, ending with a convolution (e.g. ``model.features[:7]``).
    input_shape : (C, H, W)
        One image's shape.
    value_range : (low, high)
        Every pixel of every channel lies in ``[low, high]`` (the images the model is fed).
    chunk : int
        Units bounded per backward pass (memory against speed).

    Returns
    -------
    Tensor of shape (C_out, H_out, W_out), float64
        ``u`` with ``modules(x)[c, i, j] <= u[c, i, j]`` for every image ``x`` in the box.

    Examples
    --------
    >>> conv = nn.Conv2d(1, 1, 1)
    >>> with torch.no_grad():
    ...     _ = conv.weight.fill_(-2.0), conv.bias.fill_(1.0)
    >>> conv_upper_bounds([conv], (1, 1, 1))  # 1 − 2x on [0, 1]: at most 1
    tensor([[[1.]]], dtype=torch.float64)
    """
    modules = list(modules)
    _check_chain(modules)
    low_x, high_x = (float(v) for v in value_range)
    shapes: list[tuple[int, ...]] = []
    bounds: dict[int, tuple[Tensor, Tensor]] = {}
    low = torch.full(input_shape, low_x, dtype=torch.float64)
    high = torch.full(input_shape, high_x, dtype=torch.float64)
    with torch.no_grad():
        for k, module in enumerate(modules):
            shapes.append(tuple(low.shape))
            if not isinstance(module, nn.Conv2d):
                bounds[k] = (low, high)
            low, high = _interval(module, low, high)
            relu_next = k + 1 < len(modules) and isinstance(modules[k + 1], nn.ReLU)
            if isinstance(module, nn.Conv2d) and (relu_next or k == len(modules) - 1):
                crown_low, crown_high = _crown(
                    modules[: k + 1],
                    shapes,
                    bounds,
                    low.shape,
                    (low_x, high_x),
                    chunk,
                    both=relu_next,
                )
                high = torch.minimum(high, crown_high)
                low = torch.maximum(low, crown_low) if relu_next else low
    return high


def _crown(
    modules: Sequence[nn.Module],
    shapes: Sequence[tuple[int, ...]],
    bounds: dict[int, tuple[Tensor, Tensor]],
    shape: torch.Size,
    box: tuple[float, float],
    chunk: int,
    both: bool,
) -> tuple[Tensor, Tensor]:
    """CROWN upper (and, with ``both``, lower) bounds of every unit of ``shape``."""
    n = shape.numel()
    highs, lows = [], []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        eye = torch.zeros(stop - start, n, dtype=torch.float64)
        eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        eye = eye.view(-1, *shape)
        highs.append(_upper(eye, modules, shapes, bounds, box))
        if both:
            lows.append(-_upper(-eye, modules, shapes, bounds, box))
    high = torch.cat(highs).view(shape)
    low = torch.cat(lows).view(shape) if both else torch.full_like(high, -torch.inf)
    return low, high
