"""The bundled digits CNN: accuracy, images, determinism of its training script."""

from __future__ import annotations

import torch

from dnnbrain_captum.models import digits_cnn, digits_images
from dnnbrain_captum.models.train_digits import train


def test_held_out_accuracy_is_at_least_97_percent() -> None:
    model = digits_cnn()
    images, labels = digits_images()
    assert images.shape == (359, 3, 32, 32) and labels.shape == (359,)
    assert images.dtype == torch.float32 and 0.0 <= float(images.min()) <= float(images.max()) <= 1
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.97
    assert not model.training


def test_weights_are_small_and_random_init_differs() -> None:
    from dnnbrain_captum.models.digits import _WEIGHTS

    assert _WEIGHTS.stat().st_size < 2 * 1024 * 1024
    trained, random = digits_cnn(), digits_cnn(pretrained=False)
    assert not torch.equal(trained.features[0].weight, random.features[0].weight)


def test_training_script_is_deterministic() -> None:
    first = train(epochs=1)
    second = train(epochs=1)
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert not torch.are_deterministic_algorithms_enabled()
