"""Train the bundled digits CNN, deterministically.

Run ``python -m dnnbrain_captum.models.train_digits [--out PATH]`` to rebuild
``digits_cnn.pt``. Every epoch draws fresh colours for the training digits (and shifts them by
up to two pixels), so the network learns shapes, not tints. Seeds are fixed and the
deterministic algorithms of PyTorch are used, so the same machine gives the same weights.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch import nn

from dnnbrain_captum.models.digits import (
    _WEIGHTS,
    DigitsCNN,
    digits_images,
    digits_split,
    random_colours,
    render_digits,
)

logger = logging.getLogger(__name__)


def _shift(images: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    shifted = torch.empty_like(images)
    offsets = torch.randint(-max_shift, max_shift + 1, (len(images), 2), generator=generator)
    for k, (dy, dx) in enumerate(offsets.tolist()):
        shifted[k] = torch.roll(images[k], shifts=(dy, dx), dims=(1, 2))
    return shifted


def train(epochs: int = 30, seed: int = 0, batch_size: int = 64, lr: float = 2e-3) -> DigitsCNN:
    """Train a :class:`DigitsCNN` from scratch and return it in eval mode.

    PyTorch's deterministic algorithms are switched on during training and the previous
    setting is restored afterwards.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(epochs, seed, batch_size, lr)
    finally:
        torch.use_deterministic_algorithms(previous)


def _train(epochs: int, seed: int, batch_size: int, lr: float) -> DigitsCNN:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    raw, labels = digits_split("train")
    model = DigitsCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        foreground, background = random_colours(len(labels), generator)
        images = _shift(render_digits(raw, foreground, background), generator)
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(images[batch]), labels[batch])
            loss.backward()
            optimiser.step()
        schedule.step()
        logger.info("epoch %d loss %.4f", epoch + 1, loss.item())
    return model.eval()


def accuracy(model: nn.Module) -> float:
    """Accuracy on the held-out digits."""
    images, labels = digits_images("test")
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def main() -> None:
    """Command-line entry: train and save the weights."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=_WEIGHTS)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = train(args.epochs)
    logger.info("held-out accuracy %.4f", accuracy(model))
    torch.save(model.state_dict(), args.out)


if __name__ == "__main__":
    main()
