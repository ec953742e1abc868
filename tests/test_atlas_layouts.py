"""The atlas on layers that are not (N, C, H, W): the package's layouts (ViT tokens, ConvNeXt's
channels-last Linear layers), a user's reshape_transform, and clear refusals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from dnnbrain_captum.atlas import build_atlas, read_atlas
from tests.test_architectures import nhwc, tiny_convnext, tiny_maxvit, tiny_swin, tiny_vit, vit_grid

TOP_K = 2
CHEAP = {
    "top_k": TOP_K,
    "n_syntheses": 1,
    "synthesis": {"n_iter": 1},
    "occlusion": {"sliding_window_shapes": (16, 16), "strides": (16, 16)},
    "batch_size": 4,
}


def _images(n: int = 6) -> Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _brute_force(model: nn.Module, layer: str, grid: Callable[[Tensor], Tensor]) -> np.ndarray:
    """Each image alone through the whole model; the layer's raw output put on its grid by the
    test's own oracle; each channel's mean."""
    seen: list[Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda module, args, output: seen.append(grid(output.detach()))
    )
    try:
        with torch.no_grad():
            for image in _images():
                model(image[None])
    finally:
        handle.remove()
    return torch.cat(seen).mean(dim=(2, 3)).double().numpy()


def _check_against(out: Path, truth: np.ndarray, channels: list[int], shape: list[int]) -> None:
    layer = read_atlas(out)["layers"][0]
    assert layer["shape"] == shape
    assert [c["channel"] for c in layer["channels"]] == channels
    for record in layer["channels"]:
        column = truth[:, record["channel"]]
        order = sorted(range(len(column)), key=lambda i: (-column[i], i))
        assert record["top_ids"] == [str(i) for i in order[:TOP_K]]
        np.testing.assert_allclose(record["top_activations"], column[order[:TOP_K]], rtol=1e-5)
    assert (out / layer["channels"][0]["page"]).is_file()


@pytest.mark.parametrize(
    ("make", "layer", "oracle", "shape"),
    [
        (tiny_vit, "encoder.layers.encoder_layer_1", vit_grid, [16, 4, 4]),  # (N, 1 + 16, 16)
        (tiny_convnext, "features.1.0.block.3", nhwc, [32, 8, 8]),  # Linear on (N, 8, 8, 32)
    ],
    ids=["vit-tokens", "convnext-channels-last"],
)
def test_layouts_are_read_as_channels(
    tmp_path: Path,
    make: Callable[[], nn.Module],
    layer: str,
    oracle: Callable[[Tensor], Tensor],
    shape: list[int],
) -> None:
    """Channel 5 of a ViT block is feature 5 on the 4 x 4 patch grid (not token 5), and the
    top-K equal brute force through the test's own reshaping."""
    model = make()
    out = tmp_path / "atlas"
    build_atlas(model, [layer], _images(), out, channels="0,5,9", **CHEAP)
    _check_against(out, _brute_force(model, layer, oracle), [0, 5, 9], shape)


def test_a_user_reshape_transform_is_used_for_every_piece(tmp_path: Path) -> None:
    """The user's transform (here: the ViT grid *transposed*, a different but valid reading)
    decides the channels' maps; the numbers follow it, and it is recorded by name."""
    model, layer = tiny_vit(), "encoder.layers.encoder_layer_1"

    def transposed_grid(output: Tensor) -> Tensor:
        return vit_grid(output).transpose(2, 3)

    out = tmp_path / "atlas"
    build_atlas(
        model, [layer], _images(), out, channels="3", reshape_transform=transposed_grid, **CHEAP
    )
    _check_against(out, _brute_force(model, layer, transposed_grid), [3], [16, 4, 4])
    atlas = read_atlas(out)
    assert atlas["reshape_transform"].endswith("transposed_grid")
    maps = np.load(out / "runs" / layer / "maps" / "result.npy")
    assert maps.shape == (TOP_K, 32, 32)


def test_layers_without_a_grid_or_a_known_layout_are_refused(tmp_path: Path) -> None:
    images = _images()
    cases = [
        # inside attention: windows of the grid, not the grid
        (
            tiny_maxvit(),
            "blocks.0.layers.0.layers.window_attention.attn_layer",
            None,
            "reshape_transform",
        ),
        # a transform that gives no grid
        (tiny_vit(), "encoder.layers.encoder_layer_1", lambda o: o[:, 1:], r"\(N, C, H, W\)"),
        # Swin stage: a grid, but no regular receptive field (shifted windows)
        (tiny_swin(), "features.1", None, "no regular receptive field.*choose another layer"),
    ]
    for k, (model, layer, transform, message) in enumerate(cases):
        out = tmp_path / f"out{k}"
        with pytest.raises(ValueError, match=message):
            build_atlas(model, [layer], images, out, reshape_transform=transform, **CHEAP)
        assert not out.exists()
