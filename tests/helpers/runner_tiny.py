"""A tiny attribution and data set for the runner's subprocess tests: only torch and the runner
are imported (no Captum, no figures), so a killed or racing job starts fast."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class TinyAttribution:
    """``attribute(x)`` = a fixed 1x1 convolution of ``x``: (B, 3, 4, 4) -> (B, 3, 4, 4)."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.forward_func = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            for parameter in self.forward_func.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))

    def attribute(self, inputs: Tensor, target: Any = None) -> Tensor:
        with torch.no_grad():
            return self.forward_func(inputs)


def tiny_data(n: int) -> Tensor:
    """``n`` fixed images of shape (3, 4, 4)."""
    return torch.linspace(-1.0, 1.0, n * 48).reshape(n, 3, 4, 4)
