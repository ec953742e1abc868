"""Hand-built models whose target responds to one known region or one known image pattern."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RegionModel(nn.Module):
    """``detector`` channel 0 = ReLU(sum of input channels) inside one window, 0 elsewhere.

    Channel 1 = ReLU(−sum of input channels) everywhere (it never sees positive images).
    The window is rows ``top:bottom``, columns ``left:right`` of a ``size`` image. ``fc``
    reads the detector out into 2 logits (logit 0 = mean of channel 0 × 256).
    """

    def __init__(
        self,
        size: tuple[int, int] = (16, 16),
        window: tuple[int, int, int, int] = (4, 12, 4, 12),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        top, bottom, left, right = window
        inside = torch.zeros(1, 1, *size)
        inside[..., top:bottom, left:right] = 1.0
        self.register_buffer("inside", inside)
        self.mix = nn.Conv2d(in_channels, 2, 1, bias=False)
        with torch.no_grad():
            self.mix.weight[0].fill_(1.0)
            self.mix.weight[1].fill_(-1.0)
        self.relu = nn.ReLU()
        self.detector = nn.Identity()
        self.fc = nn.Linear(2 * size[0] * size[1], 2, bias=False)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[0, : size[0] * size[1]] = 256.0 / (size[0] * size[1])
            self.fc.weight[1, size[0] * size[1] :] = 1.0
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        maps = self.relu(self.mix(x))
        maps = torch.cat([maps[:, :1] * self.inside, maps[:, 1:]], dim=1)
        return self.fc(self.detector(maps).flatten(1))


class PatternModel(nn.Module):
    """``detector`` = ReLU of the correlation of each 4×4 tile with a fixed pattern ``P``.

    One-channel input; a 4×4 convolution with stride 4 whose kernel is :attr:`pattern`.
    """

    def __init__(self, pattern: Tensor) -> None:
        super().__init__()
        self.pattern = pattern
        self.conv = nn.Conv2d(1, 1, 4, stride=4, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(pattern.view(1, 1, 4, 4))
        self.detector = nn.ReLU()
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.detector(self.conv(x)).flatten(1).sum(1, keepdim=True)


def orthogonal_patterns() -> tuple[Tensor, Tensor]:
    """Two orthonormal 4×4 patterns: a vertical edge ``P`` and a horizontal edge ``Q``."""
    p = torch.tensor([-1.0, -1.0, 1.0, 1.0]).repeat(4, 1) / 4.0
    q = p.T.contiguous()
    return p, q
