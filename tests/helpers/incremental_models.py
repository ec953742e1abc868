"""Small random CNNs with geometry variety for the incremental occlusion tests.

Every network is built from a seed: kernel sizes, strides, paddings (incl. ``"same"``),
dilations, groups, pooling kinds (max with dilation/ceil_mode, average with
``count_include_pad``/``divisor_override``/ceil_mode), a channel concatenation and a residual
addition, so that one seed exercises one combination of footprints.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RandomGeometryNet(nn.Module):
    """stem conv → BN → act → pool → cat(grouped conv, 1×1 conv) → + depthwise → head conv.

    The geometry is drawn from ``seed``; draws whose output on a ``size`` image would be
    smaller than 2×2 are redrawn (deterministically), so every seed gives a usable network.
    """

    def __init__(self, seed: int, size: tuple[int, int] = (37, 30)) -> None:
        super().__init__()
        for attempt in range(1000):
            self._build(random.Random(seed * 1000 + attempt))
            try:
                with torch.no_grad():
                    out = self.forward(torch.zeros(1, 3, *size))
            except RuntimeError:
                continue
            if min(out.shape[-2:]) >= 2:
                break
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.4)
            self.bn.running_mean.copy_(torch.randn(6, generator=generator) * 0.1)
            self.bn.running_var.copy_(torch.rand(6, generator=generator) + 0.5)
        self.eval()

    def _build(self, rng: random.Random) -> None:
        k = rng.choice([1, 2, 3, 4, 5])
        self.stem = nn.Conv2d(
            3,
            6,
            k,
            stride=rng.choice([1, 2, 3]),
            padding=rng.randint(0, k),
            dilation=rng.choice([1, 2]),
        )
        self.bn = nn.BatchNorm2d(6)
        self.act = rng.choice([nn.GELU(), nn.LeakyReLU(0.1), nn.ReLU(inplace=True), nn.Tanh()])
        pk = rng.choice([2, 3])
        if rng.random() < 0.5:
            self.pool: nn.Module = nn.MaxPool2d(
                pk,
                stride=rng.choice([1, 2]),
                padding=rng.randint(0, pk // 2),
                dilation=rng.choice([1, 2]),
                ceil_mode=rng.random() < 0.5,
            )
        else:
            self.pool = nn.AvgPool2d(
                pk,
                stride=rng.choice([1, 2, 3]),
                padding=rng.randint(0, pk // 2),
                ceil_mode=rng.random() < 0.5,
                count_include_pad=rng.random() < 0.5,
                divisor_override=rng.choice([None, None, 3]),
            )
        d = rng.choice([1, 2])
        self.grouped = nn.Conv2d(6, 8, 3, padding=d, dilation=d, groups=2)
        self.point = nn.Conv2d(6, 8, 1)
        dk, dd = rng.choice([(3, 1), (3, 2), (2, 2)])  # even kernel + odd dilation warns
        self.depthwise = nn.Conv2d(16, 16, dk, padding="same", dilation=dd, groups=16)
        hk = rng.choice([1, 2, 3])
        self.head = nn.Conv2d(
            16,
            5,
            hk,
            stride=rng.choice([1, 2]),
            padding=rng.randint(0, hk),
            dilation=rng.choice([1, 2]),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.act(self.bn(self.stem(x))))
        y = torch.cat([self.grouped(x), F.relu(self.point(x))], 1)
        y = y + 0.5 * self.depthwise(y)
        return self.head(y)


class FlipBeforeTarget(nn.Module):
    """conv → torch.flip → conv: the flip has no known footprint (fallback)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 3, 3)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(torch.flip(self.conv1(x), dims=(-1,)))


class GlobalGate(nn.Module):
    """conv → multiplied by its global mean (squeeze-excitation-like) → conv (fallback)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = nn.AdaptiveAvgPool2d(1)
        self.conv2 = nn.Conv2d(4, 3, 3)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(x)
        return self.conv2(y * torch.sigmoid(self.gate(y)))
