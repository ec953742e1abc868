"""The bundled digits CNN and its images: real results on a machine with no downloads.

The network is a small AlexNet-shaped CNN (five convolutions ``conv1``…``conv5`` in
``features``, three linear layers ``fc1``…``fc3`` in ``classifier``, the same DNNBrain layer
names as AlexNet) trained on scikit-learn's 8×8 handwritten digits, upsampled to 32×32 and
tinted with a random foreground and background colour per image. Its weights ship inside the
package and were produced by :mod:`dnnbrain_captum.models.train_digits` (deterministic).

Held-out accuracy of the shipped weights: 99.2 % (356 of the 359 test digits) (the test suite
asserts at least 97 %).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["DIGITS_SIZE", "DigitsCNN", "digits_cnn", "digits_images", "render_digits"]

DIGITS_SIZE = 32
_WEIGHTS = Path(__file__).with_name("digits_cnn.pt")
_SPLIT_SEED = 0
_TEST_FRACTION = 0.2


class DigitsCNN(nn.Module):
    """A five-convolution, three-linear-layer CNN for 3×32×32 digit images in [0, 1].

    Layers, with their DNNBrain aliases: ``features.0`` conv1 (3→16), ``.1`` conv1_relu,
    ``.2`` conv1_maxpool, ``.3`` conv2 (16→32), ``.4`` conv2_relu, ``.5`` conv2_maxpool,
    ``.6`` conv3 (32→48), ``.7`` conv3_relu, ``.8`` conv4 (48→64), ``.9`` conv4_relu,
    ``.10`` conv5 (64→64), ``.11`` conv5_relu, ``.12`` conv5_maxpool (64×4×4);
    ``classifier.0`` fc1 (1024→128), ``.1`` fc1_relu, ``.2`` fc2 (128→64), ``.3`` fc2_relu,
    ``.4`` fc3 (64→10 logits). All convolutions are 3×3 with padding 1.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        widths = (3, 16, 32, 48, 64, 64)
        layers: list[nn.Module] = []
        for k in range(5):
            layers += [nn.Conv2d(widths[k], widths[k + 1], 3, padding=1), nn.ReLU(inplace=True)]
            if k in (0, 1, 4):
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (N, 10) for images of shape (N, 3, 32, 32) in [0, 1]."""
        return self.classifier(torch.flatten(self.features(x), 1))


def digits_cnn(pretrained: bool = True) -> DigitsCNN:
    """The bundled digits CNN, in eval mode.

    Parameters
    ----------
    pretrained : bool
        Load the shipped weights (default); False gives a randomly initialised network.

    Returns
    -------
    DigitsCNN

    Examples
    --------
    >>> model = digits_cnn()
    >>> images, labels = digits_images()
    >>> bool((model(images[:8]).argmax(1) == labels[:8]).float().mean() > 0.8)
    True
    """
    model = DigitsCNN()
    if pretrained:
        state = torch.load(_WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()


def render_digits(raw: Tensor, foreground: Tensor, background: Tensor) -> Tensor:
    """Upsample 8×8 digit intensities and tint them.

    Parameters
    ----------
    raw : Tensor of shape (N, 8, 8)
        scikit-learn digit intensities in [0, 16].
    foreground, background : Tensor of shape (N, 3)
        RGB colours in [0, 1].

    Returns
    -------
    Tensor of shape (N, 3, 32, 32)
        Images in [0, 1].
    """
    ink = nn.functional.interpolate(
        (raw / 16.0).unsqueeze(1),
        size=(DIGITS_SIZE, DIGITS_SIZE),
        mode="bilinear",
        align_corners=False,
    ).clamp(0, 1)
    return ink * foreground[:, :, None, None] + (1 - ink) * background[:, :, None, None]


def random_colours(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Contrasting foreground (bright) and background (dark) colours, shape (n, 3) each."""
    foreground = 0.55 + 0.45 * torch.rand(n, 3, generator=generator)
    background = 0.35 * torch.rand(n, 3, generator=generator)
    return foreground, background


def digits_split(split: str) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits, split deterministically: ``(raw (N, 8, 8), labels (N,))``."""
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data = load_digits()
    raw = torch.as_tensor(data.images, dtype=torch.float32)
    labels = torch.as_tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_test = int(round(_TEST_FRACTION * len(labels)))
    chosen = order[:n_test] if split == "test" else order[n_test:]
    return raw[chosen], labels[chosen]


def digits_images(split: str = "test", n: int | None = None) -> tuple[Tensor, Tensor]:
    """Model-ready digit images and their labels.

    Parameters
    ----------
    split : {"test", "train"}
        The held-out digits (default, 359 images) or the training digits.
    n : int, optional
        Keep only the first ``n`` images.

    Returns
    -------
    images : Tensor of shape (N, 3, 32, 32)
        float32 in [0, 1], each tinted with fixed colours.
    labels : Tensor of shape (N,)
        The digit of each image (int64).

    Examples
    --------
    >>> images, labels = digits_images(n=4)
    >>> tuple(images.shape), labels.tolist()
    ((4, 3, 32, 32), [6, 5, 5, 7])
    """
    raw, labels = digits_split(split)
    generator = torch.Generator().manual_seed(1 if split == "test" else 2)
    foreground, background = random_colours(len(labels), generator)
    images = render_digits(raw, foreground, background)
    if n is not None:
        images, labels = images[:n], labels[:n]
    return images, labels
