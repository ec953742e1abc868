"""Tiny models for tests: deterministic small CNNs and hand-weighted ones with literal values."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TinyConvNet(nn.Module):
    """conv1 (3→4) → relu1 → pool → conv2 (4→4) → relu2 → fc (5 logits), for 12×12 inputs.

    Weights come from a fixed seed, so every instance is the same network.
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1234)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.fc = nn.Linear(4 * 6 * 6, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.relu2(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


class SumConv(nn.Module):
    """One 1→1 channel 2×2 all-ones convolution (stride 1, no padding, no bias), then ReLU.

    On a 1×H×W input, output unit (i, j) is the sum of the 2×2 block whose top-left pixel is
    (i, j); values are easy to compute by hand.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 2, bias=False)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(x)).flatten(1)


class TwoChannel(nn.Module):
    """1→2 channels, 1×1 convolutions with weights +1 and −2 and biases 0 and 1, then ReLU,
    then a linear readout ``logit0 = ch0_mean``, ``logit1 = ch1_mean``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 1.0]))
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(x)).mean((2, 3))


class ToTokens(nn.Module):
    """(N, C, H, W) maps to (N, H*W, C) tokens."""

    def forward(self, h: Tensor) -> Tensor:
        return h.flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, H*W, C)


class TokenNet(nn.Module):
    """A 4x4 patch embedding, its tokens, and a Linear on the tokens (a ViT in miniature)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Conv2d(3, 4, 4, stride=4)
        self.to_tokens = ToTokens()
        self.proj = nn.Linear(4, 3)

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        return self.proj(self.to_tokens(self.embed(x * scale)))


class FunctionalReluConv(nn.Module):
    """conv (1→2, 3×3, no padding) → functional ``torch.relu`` → spatial mean: no ``nn.ReLU``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv(x)).mean((2, 3))
