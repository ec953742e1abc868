"""The command line on transformers, with no option of their own.

``dnnbrain-captum <subcommand> --model vit_b_16 --layer encoder.layers.encoder_layer_11`` must
preprocess images as the model's torchvision weights do (resize 256, crop 224, ImageNet
statistics for ViT-B/16) and read the token layer on its 14 x 14 patch grid. The fast tests
build the models under their torchvision names with the same module names but narrow
widths (``torchvision.models.get_model`` patched); the full-size ``vit_b_16`` runs behind
the ``slow`` marker. Every oracle is written by hand: torchvision's own transforms for the
preprocessing, the tokens reshaped and interpolated, occlusion by brute force, autograd.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import Tensor, nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

from dnnbrain_captum import cli

VIT_LAYER = "encoder.layers.encoder_layer_11"


def run(args: Sequence[object]) -> int:
    try:
        return cli.main([str(a) for a in args])
    except SystemExit as exit_:
        return int(exit_.code or 0)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60 x 80 landscape photo (not square: the crop must not squash it)."""
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def narrow_vit(image_size: int = 224, patch: int = 16) -> nn.Module:
    """ViT-B/16's module names (12 encoder layers), 8 features wide."""
    return VisionTransformer(image_size, patch, 12, 1, 8, 8)


def narrow_swin() -> nn.Module:
    """Swin-T's module names (stages 2, 2, 6, 2), 8 features wide, windows of 7."""
    return SwinTransformer([4, 4], 8, [2, 2, 6, 2], [1, 1, 1, 1], [7, 7])


@pytest.fixture
def narrow_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """``get_model`` builds the narrow stand-ins for the names the tests use."""
    factories: dict[str, Callable[[], nn.Module]] = {
        "vit_b_16": narrow_vit,
        "vit_h_14": lambda: narrow_vit(patch=14),
        "swin_t": narrow_swin,
    }

    def get_model(name: str, **kwargs: object) -> nn.Module:
        assert kwargs == {"weights": None}, kwargs  # random weights only
        return factories[name]()

    monkeypatch.setattr(torchvision.models, "get_model", get_model)


def rebuilt(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """The model the CLI builds with ``--seed seed`` (random weights)."""
    torch.manual_seed(seed)
    return factory().eval()


def weights_preprocessed(photo: Path, name: str) -> Tensor:
    """The photo as the model's default torchvision weights preprocess it, (1, 3, h, w)."""
    pixels = torch.from_numpy(np.asarray(Image.open(photo).convert("RGB")).copy())
    image = pixels.permute(2, 0, 1).float() / 255
    transform = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    return transform(image)[None]


def layer_out(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    seen: list[Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0]


def vit_grid(out: Tensor) -> Tensor:
    """(N, 1 + 14*14, D) -> (N, D, 14, 14): class token dropped, patches row by row."""
    side = int(round((out.shape[1] - 1) ** 0.5))
    return out[:, 1:].reshape(out.shape[0], side, side, -1).permute(0, 3, 1, 2)


def nhwc(out: Tensor) -> Tensor:
    return out.permute(0, 3, 1, 2)


def preprocessing_record(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())["preprocessing"]


def expected_record(name: str) -> dict:
    transform = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    return {
        "resize_shorter_side": transform.resize_size[0],
        "center_crop": transform.crop_size[0],
        "mean": list(transform.mean),
        "std": list(transform.std),
        "interpolation": transform.interpolation.value,
    }


UPSAMPLE_CASES = [
    ("vit_b_16", narrow_vit, VIT_LAYER, vit_grid),
    ("swin_t", narrow_swin, "features.5.1", nhwc),  # (N, H, W, C) Swin stage
]


@pytest.mark.parametrize(
    ("name", "factory", "layer", "to_grid"), UPSAMPLE_CASES, ids=["vit", "swin"]
)
def test_upsample_uses_the_weights_preprocessing_and_the_token_grid(
    name, factory, layer, to_grid, narrow_models, photo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "up"
    args = ["upsample", photo, "--model", name, "--layer", layer, "--channel", 5]
    assert run([*args, "--out", out, "--quiet", "--no-figures"]) == 0
    assert preprocessing_record(out) == expected_record(name)
    x = weights_preprocessed(photo, name)
    assert tuple(x.shape) == (1, 3, 224, 224)
    with torch.no_grad():
        grid = to_grid(layer_out(rebuilt(factory), layer, x))[:, 5:6]
    expected = F.interpolate(grid, size=(224, 224), mode="bicubic", align_corners=False)[:, 0]
    result = np.load(out / "result.npy")
    assert result.shape == (1, 224, 224)
    np.testing.assert_allclose(result, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_saliency_of_a_vit_feature_is_autograd_of_its_token_grid_mean(
    narrow_models, photo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sal"
    args = ["saliency", photo, "--model", "vit_b_16", "--layer", VIT_LAYER, "--channel", 3]
    assert run([*args, "--out", out, "--quiet", "--no-figures"]) == 0
    leaf = weights_preprocessed(photo, "vit_b_16").requires_grad_(True)
    grid = vit_grid(layer_out(rebuilt(narrow_vit), VIT_LAYER, leaf))
    (expected,) = torch.autograd.grad(grid[:, 3].mean(), leaf)
    np.testing.assert_allclose(np.load(out / "result.npy"), expected.numpy(), rtol=1e-4, atol=1e-6)


def test_occlusion_of_a_vit_feature_equals_brute_force(
    narrow_models, photo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "occ"
    args = ["occlusion", photo, "--model", "vit_b_16", "--layer", VIT_LAYER, "--channel", 2]
    assert run([*args, "--window", 112, "--stride", 112, "--out", out, "--quiet"]) == 0
    model, x = rebuilt(narrow_vit), weights_preprocessed(photo, "vit_b_16")
    expected = torch.zeros(2, 2)
    with torch.no_grad():
        clean = vit_grid(layer_out(model, VIT_LAYER, x))[:, 2].mean()
        for r in range(2):
            for c in range(2):
                covered = x.clone()
                covered[..., r * 112 : (r + 1) * 112, c * 112 : (c + 1) * 112] = 0.0
                expected[r, c] = clean - vit_grid(layer_out(model, VIT_LAYER, covered))[:, 2].mean()
    np.testing.assert_allclose(
        np.load(out / "result.npy")[0], expected.numpy(), rtol=1e-4, atol=1e-6
    )


def test_rf_of_a_vit_token_after_attention_is_the_whole_image(
    narrow_models, tmp_path: Path
) -> None:
    for layer, unit, region in (
        ("conv_proj", (3, 4), [[48, 64], [64, 80]]),  # a patch: 16 x 16 pixels
        (VIT_LAYER, (3, 4), [[0, 224], [0, 224]]),  # after global attention
    ):
        out = tmp_path / layer
        args = ["rf", "--model", "vit_b_16", "--layer", layer, "--unit", *unit]
        assert run([*args, "--out", out, "--quiet", "--no-figures"]) == 0
        assert np.load(out / "region.npy").tolist() == region


def test_a_vit_built_for_224_gets_224_even_if_its_weights_use_another_size(
    narrow_models, photo: Path, tmp_path: Path
) -> None:
    # vit_h_14's default weights (SWAG, end to end) preprocess to 518 x 518, but random
    # weights build the model for 224 x 224 inputs: the model's own size wins.
    assert expected_record("vit_h_14")["center_crop"] == 518
    out = tmp_path / "h14"
    args = ["upsample", photo, "--model", "vit_h_14", "--layer", VIT_LAYER, "--channel", 0]
    assert run([*args, "--out", out, "--quiet", "--no-figures"]) == 0
    assert preprocessing_record(out)["center_crop"] == 224
    assert np.load(out / "result.npy").shape == (1, 224, 224)


@pytest.mark.slow
def test_full_size_vit_b_16_from_the_command_line(photo: Path, tmp_path: Path) -> None:
    model = rebuilt(lambda: torchvision.models.vit_b_16(weights=None))
    x = weights_preprocessed(photo, "vit_b_16")
    args = ["--model", "vit_b_16", "--layer", VIT_LAYER, "--channel", 5]
    assert run(["upsample", photo, *args, "--out", tmp_path / "u", "--quiet"]) == 0
    assert preprocessing_record(tmp_path / "u") == expected_record("vit_b_16")
    leaf = x.clone().requires_grad_(True)
    grid = vit_grid(layer_out(model, VIT_LAYER, leaf))
    assert tuple(grid.shape) == (1, 768, 14, 14)
    upsampled = F.interpolate(grid[:, 5:6].detach(), size=(224, 224), mode="bicubic")[:, 0]
    np.testing.assert_allclose(
        np.load(tmp_path / "u" / "result.npy"), upsampled.numpy(), rtol=1e-4, atol=1e-5
    )
    assert run(["saliency", photo, *args, "--out", tmp_path / "s", "--quiet"]) == 0
    (expected,) = torch.autograd.grad(grid[:, 5].mean(), leaf)
    np.testing.assert_allclose(
        np.load(tmp_path / "s" / "result.npy"), expected.numpy(), rtol=1e-4, atol=1e-6
    )
