"""Theoretical receptive fields through attention: torchvision's ViT, Swin (v1, v2) and
MaxViT, literal values by hand and the gradient-support probe unit by unit."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tm
from torchvision.models.maxvit import MaxVit
from torchvision.models.swin_transformer import (
    PatchMergingV2,
    SwinTransformer,
    SwinTransformerBlockV2,
)
from torchvision.models.vision_transformer import VisionTransformer

from dnnbrain_captum import TheoreticalReceptiveField
from tests.helpers.rf_models import disagreements

# Swin's shifted windows mask other regions with a logit of -100: a softmax weight below
# e**-100 ~ 4e-44, which the analysis counts as zero. The probe counts a pixel when its
# gradient exceeds 1e-30 of the unit's largest one.
SWIN_MASK = 1e-30


def tiny_vit() -> VisionTransformer:
    return VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)


def tiny_swin(v2: bool = False) -> SwinTransformer:
    extra = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    return SwinTransformer([4, 4], 16, [2, 2], [2, 2], [4, 4], **extra)


def tiny_maxvit() -> MaxVit:
    return MaxVit((32, 32), 8, 2, [8, 16], [1, 1], 4, 0.0, num_classes=10)


def test_vit_tokens_keep_their_patch_until_attention_sees_the_image() -> None:
    table = TheoreticalReceptiveField(tiny_vit(), (3, 32, 32)).compute()
    assert table.find_region("conv_proj", (1, 2)) == [(8, 16), (16, 24)]
    before = table["encoder.dropout"]  # class token + patch tokens, before any attention
    assert before.tokens == (1, 1) and before.output_size == (4, 4)
    assert table.find_region("encoder.dropout", (1, 2)) == [(8, 16), (16, 24)]
    block = table["encoder.layers.encoder_layer_0"]
    assert block.tokens == (1, 1) and block.size == (32, 32) and block.stride == (0, 0)
    assert table.find_region("encoder.layers.encoder_layer_0", (3, 0)) == [(0, 32), (0, 32)]
    assert not table["heads"].spatial  # the class token's head


def test_swin_windows_grow_exactly_and_shifted_windows_respect_the_mask() -> None:
    table = TheoreticalReceptiveField(tiny_swin(), (3, 32, 32)).compute()
    # 8 x 8 tokens of 4 x 4 pixels, windows of 4 tokens; block 1 shifts by 2 (rolled map:
    # rows 6, 7 and 0, 1 share a window but lie in different regions, masked apart).
    assert table.find_region("features.1.0", (5, 2)) == [(16, 32), (0, 16)]
    assert table.find_region("features.1.1", (0, 0)) == [(0, 16), (0, 16)]
    assert table.find_region("features.1.1", (2, 6)) == [(0, 32), (16, 32)]
    assert table.find_region("features.1.1", (7, 3)) == [(16, 32), (0, 32)]
    assert table["features.1.1"].size is None  # windows: no affine form


@pytest.mark.parametrize(
    ("factory", "size", "threshold"),
    [
        (tiny_vit, (3, 32, 32), 0.0),
        (tiny_swin, (3, 32, 32), SWIN_MASK),
        (tiny_swin, (3, 36, 36), 0.0),  # 9 x 9 tokens: padded windows
        (lambda: tiny_swin(v2=True), (3, 32, 32), SWIN_MASK),
        (tiny_maxvit, (3, 32, 32), 0.0),
    ],
    ids=["vit", "swin-32", "swin-36", "swin-v2", "maxvit"],
)
def test_probe_agrees_on_small_transformers(factory, size, threshold) -> None:
    model = factory().eval()
    table = TheoreticalReceptiveField(model, size).compute()
    assert disagreements(model, size, table, torch.float64, threshold=threshold) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kwargs", "size", "threshold"),
    [
        ("vit_b_16", {"image_size": 64}, 64, 0.0),
        ("swin_t", {}, 64, SWIN_MASK),
        ("swin_v2_t", {}, 64, SWIN_MASK),
        ("maxvit_t", {}, 224, 0.0),
    ],
)
def test_probe_agrees_on_torchvision_transformers(name, kwargs, size, threshold) -> None:
    model = tm.get_model(name, **kwargs).eval()
    table = TheoreticalReceptiveField(model, (3, size, size)).compute()
    assert disagreements(model, (3, size, size), table, torch.float64, threshold=threshold) == []
