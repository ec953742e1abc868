"""The bundled digits CNN's data-silent channels can fire: saved images prove it (issue 15).

``benchmarks/results/silent_channel_images.pt`` holds, per channel (``"conv4_relu:1"`` …), a
uint8 image (``image = u8 / 255``, so every value lies in [0, 1]) found by
``benchmarks/bench_silent_search.py`` (``--channels conv4_relu:1,conv4_relu:3,conv4_relu:42,
conv4_relu:44 --steps 600``; ``--channels hard --steps 300``, ``conv4_relu:55`` with
``--steps 600``; seed 0). Each channel is exactly 0 after its ReLU on every
held-out digit; the saved image makes at least one unit of its pre-activation strictly positive
in the true model (plain forward of ``model.features``, no hooks), in float32 and float64.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dnnbrain_captum import digits_cnn, digits_images

IMAGES = Path(__file__).parents[1] / "benchmarks" / "results" / "silent_channel_images.pt"
CONV_INDEX = {"conv1": 0, "conv2": 3, "conv3": 6, "conv4": 8, "conv5": 10}
# never reached by the searches of ``bench_synthesis.py --silent``; now each has an image
ONCE_OPEN = ["conv4_relu:1", "conv4_relu:3", "conv4_relu:42", "conv4_relu:44"]
# reached there by a hard search only, not reliably by the default synthesis
HARD_SEARCH_ONLY = [
    "conv3_relu:10", "conv3_relu:23", "conv3_relu:39", "conv4_relu:4", "conv4_relu:7",
    "conv4_relu:25", "conv4_relu:36", "conv4_relu:55", "conv5_relu:16", "conv5_relu:19",
    "conv5_relu:31", "conv5_relu:39",
]  # fmt: skip


def _saved() -> dict[str, torch.Tensor]:
    return torch.load(IMAGES, weights_only=True)


def _pre_activation(name: str, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The channel's pre-activation, shape (N, H, W), by a plain forward in ``dtype``."""
    conv, channel = name.split(":")
    stop = CONV_INDEX[conv.removesuffix("_relu")]
    net = digits_cnn().features[: stop + 1].to(dtype)
    with torch.no_grad():
        return net(images.to(dtype))[:, int(channel)]


def test_the_file_is_small_and_holds_every_channel_found() -> None:
    assert IMAGES.stat().st_size < 200_000
    assert set(_saved()) == set(ONCE_OPEN) | set(HARD_SEARCH_ONLY)


@pytest.mark.parametrize("name", sorted(_saved()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_saved_image_fires_its_channel(name: str, dtype: torch.dtype) -> None:
    u8 = _saved()[name]
    assert u8.dtype == torch.uint8 and u8.shape == (3, 32, 32)
    image = u8.to(dtype) / 255
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    assert float(_pre_activation(name, image[None], dtype).max()) > 0


@pytest.mark.parametrize("name", sorted(_saved()))
def test_the_channel_is_silent_on_every_held_out_digit(name: str) -> None:
    """What makes the saved image worth keeping: no digit fires the channel."""
    test, _ = digits_images("test")
    assert float(_pre_activation(name, test, torch.float32).max()) <= 0
