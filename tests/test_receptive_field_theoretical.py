"""TheoreticalReceptiveField: DNNBrain's reference tables, the gradient-support probe on
every layer, unsupported operations, bad input, the model left untouched."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tm
from torch import nn

from dnnbrain_captum import TheoreticalReceptiveField
from dnnbrain_captum.receptive_field import UnsupportedOperationError
from tests.helpers.rf_models import (
    GatedNet,
    GeometryNet,
    InterpolatingNet,
    RollingNet,
    TinyUNet,
    disagreements,
)


def _meta(factory, **kwargs) -> nn.Module:
    # Geometry never reads weights: building big models on the meta device skips their init.
    with torch.device("meta"):
        return factory(**kwargs)


def _small_head(model: nn.Module, features: int) -> nn.Module:
    """Replace an AlexNet/VGG classifier by one of the same layout with tiny Linear layers,
    then materialise the model on the CPU (the probe sets every weight itself)."""
    layers = []
    for module in model.classifier:
        if isinstance(module, nn.Linear):
            out = 10 if len(layers) == len(model.classifier) - 1 else 16
            layers.append(nn.Linear(features, out, device="meta"))
            features = out
        else:
            layers.append(module)
    model.classifier = nn.Sequential(*layers)
    return model.to_empty(device="cpu")


@pytest.fixture(scope="module")
def alexnet_rf() -> TheoreticalReceptiveField:
    return TheoreticalReceptiveField(_meta(tm.alexnet), (3, 224, 224))


# --------------------------------------------------------------- DNNBrain reference tables


def test_alexnet_table_matches_dnnbrain(alexnet_rf: TheoreticalReceptiveField) -> None:
    table = alexnet_rf.compute()
    # behaviour file §10.4: (map, start, jump, rf) per layer, 224 x 224
    reference = {
        "conv1": (55, 3.5, 4, 11),
        "conv1_relu": (55, 3.5, 4, 11),
        "conv1_maxpool": (27, 7.5, 8, 19),
        "conv2": (27, 7.5, 8, 51),
        "conv2_relu": (27, 7.5, 8, 51),
        "conv2_maxpool": (13, 15.5, 16, 67),
        "conv3": (13, 15.5, 16, 99),
        "conv3_relu": (13, 15.5, 16, 99),
        "conv4": (13, 15.5, 16, 131),
        "conv4_relu": (13, 15.5, 16, 131),
        "conv5": (13, 15.5, 16, 163),
        "conv5_relu": (13, 15.5, 16, 163),
        "conv5_maxpool": (6, 31.5, 32, 195),
    }
    for alias, (n, start, jump, size) in reference.items():
        entry = table[alias]
        assert entry.output_size == (n, n), alias
        assert entry.start == (start, start), alias
        assert entry.stride == (jump, jump), alias
        assert entry.size == (size, size), alias
    assert table["features.10"] is table["conv5"]
    assert table["features.10"].padding == (66, 66)
    assert table["features"].size == (195, 195)  # containers are keyed too


def test_alexnet_find_region_examples(alexnet_rf: TheoreticalReceptiveField) -> None:
    rf = alexnet_rf
    assert rf.find_region("conv1", (0, 0)) == [(0, 9), (0, 9)]
    assert rf.find_region("conv3", (0, 0)) == [(0, 65), (0, 65)]
    assert rf.find_region("conv5", (0, 0)) == [(0, 97), (0, 97)]
    assert rf.find_region("conv5", (6, 6)) == [(30, 193), (30, 193)]
    assert rf.find_region("conv5", (12, 12)) == [(126, 224), (126, 224)]
    assert rf.find_region("conv5_maxpool", (0, 0)) == [(0, 129), (0, 129)]
    assert rf.find_region("conv5_maxpool", (5, 5)) == [(94, 224), (94, 224)]
    # conv5 units 5..7 are the only un-clipped ones (per axis)
    unclipped = [
        i
        for i in range(13)
        if rf.find_region("conv5", (i, 0))[0][1] - rf.find_region("conv5", (i, 0))[0][0] == 163
    ]
    assert unclipped == [5, 6, 7]
    # module objects, paths and aliases all work
    model = rf.model
    assert rf.find_region(model.features[10], (6, 6)) == rf.find_region("features.10", (6, 6))


def _sizes(table, keys: list[str]) -> list[int]:
    return [table[k].size[0] for k in keys]


def test_vgg_tables_match_dnnbrain() -> None:
    vgg11 = TheoreticalReceptiveField(_meta(tm.vgg11), (3, 224, 224)).compute()
    names = [
        "conv1",
        "conv1_maxpool",
        "conv2",
        "conv2_maxpool",
        "conv3",
        "conv4",
        "conv4_maxpool",
        "conv5",
        "conv6",
        "conv6_maxpool",
        "conv7",
        "conv8",
        "conv8_maxpool",
    ]
    assert _sizes(vgg11, names) == [3, 4, 8, 10, 18, 26, 30, 46, 62, 70, 102, 134, 150]
    assert [vgg11[k].stride[0] for k in names] == [1, 2, 2, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32]
    starts = [
        vgg11[k].start[0]
        for k in [
            "conv1",
            "conv1_maxpool",
            "conv2_maxpool",
            "conv4_maxpool",
            "conv6_maxpool",
            "conv8_maxpool",
        ]
    ]
    assert starts == [0.5, 1, 2, 4, 8, 16]
    assert [
        vgg11[k].output_size[0]
        for k in ["conv1", "conv2", "conv3", "conv5", "conv7", "conv8_maxpool"]
    ] == [224, 112, 56, 28, 14, 7]

    vgg16 = TheoreticalReceptiveField(_meta(tm.vgg16), (3, 224, 224)).compute()
    keys16 = [
        "conv1",
        "conv2",
        "conv2_maxpool",
        "conv3",
        "conv4",
        "conv4_maxpool",
        "conv5",
        "conv6",
        "conv7",
        "conv7_maxpool",
        "conv8",
        "conv9",
        "conv10",
        "conv10_maxpool",
        "conv11",
        "conv12",
        "conv13",
        "conv13_maxpool",
    ]
    assert _sizes(vgg16, keys16) == [
        3,
        5,
        6,
        10,
        14,
        16,
        24,
        32,
        40,
        44,
        60,
        76,
        92,
        100,
        132,
        164,
        196,
        212,
    ]

    vgg19 = TheoreticalReceptiveField(_meta(tm.vgg19_bn), (3, 224, 224)).compute()
    keys19 = [
        "conv1",
        "conv2",
        "conv2_maxpool",
        "conv3",
        "conv4",
        "conv4_maxpool",
        "conv5",
        "conv6",
        "conv7",
        "conv8",
        "conv8_maxpool",
        "conv9",
        "conv10",
        "conv11",
        "conv12",
        "conv12_maxpool",
        "conv13",
        "conv14",
        "conv15",
        "conv16",
    ]
    assert _sizes(vgg19, keys19) == [
        3,
        5,
        6,
        10,
        14,
        16,
        24,
        32,
        40,
        48,
        52,
        68,
        84,
        100,
        116,
        124,
        156,
        188,
        220,
        252,
    ]
    assert vgg19["conv16_maxpool"].size == (268, 268)
    assert vgg19["conv1_bn"].size == vgg19["conv1_relu"].size == (3, 3)


# --------------------------------------------------------------- gradient-support probe


@pytest.mark.parametrize(
    ("factory", "size"),
    [
        (GeometryNet, (3, 37, 45)),
        (GeometryNet, (3, 64, 51)),
        (GatedNet, (3, 33, 29)),
    ],
    ids=["geometry-37x45", "geometry-64x51", "gated"],
)
def test_probe_agrees_on_geometry_nets(factory, size) -> None:
    model = factory().eval()
    table = TheoreticalReceptiveField(model, size).compute()
    assert disagreements(model, size, table, torch.float32) == []


def test_probe_agrees_on_alexnet_vgg11_resnet18() -> None:
    cases = [
        (_small_head(_meta(tm.alexnet), 256 * 6 * 6), (3, 99, 99)),
        (_small_head(_meta(tm.vgg11), 512 * 7 * 7), (3, 64, 64)),
        (tm.resnet18(), (3, 64, 80)),
    ]
    for model, size in cases:
        model.eval()
        table = TheoreticalReceptiveField(model, size).compute()
        assert disagreements(model, size, table, torch.float32) == [], type(model).__name__


def test_irregular_adaptive_pooling_has_exact_regions_but_no_affine_form() -> None:
    # VGG at 64 px: features give 2x2, AdaptiveAvgPool2d((7, 7)) replicates unevenly.
    table = TheoreticalReceptiveField(_meta(tm.vgg11), (3, 64, 64)).compute()
    entry = table["avgpool"]
    assert entry.spatial and entry.output_size == (7, 7)
    assert entry.size is None and entry.stride is None and entry.padding is None
    assert table.find_region("avgpool", (0, 0)) == table.find_region("conv8_maxpool", (0, 0))
    assert table.find_region("avgpool", (6, 6)) == table.find_region("conv8_maxpool", (1, 1))
    assert "avgpool" in str(table)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "alexnet",
        "vgg16",
        "resnet50",
        "googlenet",
        "inception_v3",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "densenet121",
        "efficientnet_b0",
        "convnext_tiny",
        "squeezenet1_0",
        "squeezenet1_1",
        "shufflenet_v2_x1_0",
        "regnet_x_400mf",
        "regnet_y_400mf",
    ],
)
def test_probe_agrees_on_every_torchvision_classifier(name: str) -> None:
    kwargs = (
        {"aux_logits": False, "init_weights": False}
        if name in ("googlenet", "inception_v3")
        else {}
    )
    model = getattr(tm, name)(**kwargs).eval()
    size = (3, 160, 160) if name == "inception_v3" else (3, 128, 128)
    table = TheoreticalReceptiveField(model, size).compute()
    accelerator = getattr(torch, "accelerator", None)
    device = (
        accelerator.current_accelerator()
        if accelerator is not None and (accelerator.is_available())
        else "cpu"
    )
    assert disagreements(model, size, table, torch.float64, device) == []


# --------------------------------------------------------------- architectures and keys


def test_resnet_reused_relu_gets_one_row_per_call_and_containers() -> None:
    table = TheoreticalReceptiveField(_meta(tm.resnet18), (3, 224, 224)).compute()
    assert table["maxpool"].size == (11, 11)
    assert table["layer1.0.relu"].size == (19, 19)  # first call: after conv1 of the block
    assert table["layer1.0.relu:1"].size == (27, 27)  # second call: after the addition
    block, relu = table["layer1.0"], table["layer1.0.relu:1"]
    assert (block.size, block.stride, block.padding) == (relu.size, relu.stride, relu.padding)
    assert block.module_type == "BasicBlock" and relu.module_type == "ReLU"
    assert table["layer4"].size == (435, 435) and table["layer4"].stride == (32, 32)
    assert table["avgpool"].spatial and table["avgpool"].output_size == (1, 1)
    assert table.find_region("avgpool", (0, 0)) == [(0, 224), (0, 224)]
    assert not table["fc"].spatial and table["fc"].box == [(0, 224), (0, 224)]


def test_dilation_ceil_mode_and_crop_by_hand() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 1, 3, dilation=2),  # r 5, j 1
        nn.MaxPool2d(2, ceil_mode=True),  # r 6, j 2
        nn.Conv2d(1, 1, (1, 3), stride=(3, 1), padding=(0, 2)),
    )
    table = TheoreticalReceptiveField(model, (1, 10, 11)).compute()
    assert table["0"].size == (5, 5) and table["0"].output_size == (6, 7)
    assert table["1"].size == (6, 6) and table["1"].stride == (2, 2)
    assert table["1"].output_size == (3, 4)  # ceil_mode keeps the half window
    # the last ceil-mode window covers conv unit 6 only: pixels [6, 11) of 11 columns
    assert table.find_region("1", (2, 3)) == [(4, 10), (6, 11)]
    assert table["2"].size == (6, 10) and table["2"].stride == (6, 2)
    assert table["2"].padding == (0, 4)
    # column unit 0 sees conv units -2..0 -> only pool unit 0 is real: pixels [0, 6)
    assert table.find_region("2", (0, 0)) == [(0, 6), (0, 6)]


def test_functional_ops_in_forward_are_seen() -> None:
    table = TheoreticalReceptiveField(GeometryNet(), (3, 37, 45)).compute()
    # torch.cat of a 1x1/2 and a 3x3/2 branch: pool2 sees the union (the 3x3 path)
    assert table["branch_a"].size == (13, 25) and table["branch_b"].size == (17, 33)
    assert table["pool2"].size == (17 + 4, 33 + 2 * 8) and table["pool2"].stride == (8, 8)
    # F.pad(reflect) then the crop [:, :, 1:, :-1]: the crop shifts the rows by one unit
    assert table["depthwise"].padding == (6, 18) and table["depthwise"].output_size == (4, 4)
    assert table["mix"].padding == (6 - 8, 18) and table["mix"].output_size == (3, 3)
    assert table["mix"].spatial  # the channel-last Linear keeps the grid
    assert table["head_pool"].size == (37, 73)  # 3 -> 2 columns: windows of 2, stride 1
    # the flattened head sees only the pixels some unit reaches: the crop [1:] dropped the
    # first row of units, which alone saw the two top rows of pixels
    assert not table["fc"].spatial and table["fc"].box == [(2, 37), (0, 45)]


# --------------------------------------------------------------- unsupported operations


def test_grid_sampling_raises_naming_the_module() -> None:
    class Warp(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            grid = torch.zeros(x.shape[0], 4, 4, 2)
            return nn.functional.grid_sample(x, grid, align_corners=False)

    model = nn.Sequential(nn.Conv2d(3, 2, 3), Warp())
    with pytest.raises(UnsupportedOperationError, match=r"grid_sample.*'1'.*Warp"):
        TheoreticalReceptiveField(model, (3, 16, 16)).compute()
    assert issubclass(UnsupportedOperationError, NotImplementedError)


def test_upsampling_roll_and_transposed_convolution_by_hand() -> None:
    # Output row o of a stride-2, kernel-3, padding-1 transposed convolution reads input
    # rows i with o = 2i - 1 + t, t in 0..2: even o -> i = o/2; odd o -> (o-1)/2 and (o+1)/2.
    model = nn.Sequential(nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1))
    table = TheoreticalReceptiveField(model, (1, 4, 4)).compute()
    assert table["0"].output_size == (8, 8) and table["0"].size is None
    assert table.find_region("0", (0, 0)) == [(0, 1), (0, 1)]
    assert table.find_region("0", (1, 3)) == [(0, 2), (1, 3)]
    assert table.find_region("0", (7, 7)) == [(3, 4), (3, 4)]
    # RollingNet: a 3x3 valid convolution (14 x 14 units) rolled by one column.
    table = TheoreticalReceptiveField(RollingNet(), (3, 16, 16)).compute()
    assert table.find_region("conv", (0, 0)) == [(0, 3), (0, 3)]
    # Upsample(nearest, x2) after a 3x3 convolution: unit 2k+1 repeats conv unit k.
    table = TheoreticalReceptiveField(InterpolatingNet(), (3, 16, 16)).compute()
    assert table["up"].output_size == (28, 28)
    assert table.find_region("up", (5, 0)) == [(2, 5), (0, 3)]


@pytest.mark.parametrize("size", [(3, 16, 16), (3, 20, 12)], ids=["16x16", "20x12"])
def test_probe_agrees_on_a_small_unet(size) -> None:
    model = TinyUNet().eval()
    table = TheoreticalReceptiveField(model, size).compute()
    assert table["up2"].output_size == (size[1], size[2])
    assert disagreements(model, size, table, torch.float64) == []


def test_value_dependent_forward_names_the_cause_and_the_module() -> None:
    class ValueDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if float(x.sum()) > 0 else x

    model = nn.Sequential(nn.Conv2d(1, 1, 3), ValueDependent())
    with pytest.raises(
        UnsupportedOperationError,
        match=r"module '1' \(ValueDependent\).*reads tensor values.*shape-only",
    ):
        TheoreticalReceptiveField(model, (1, 8, 8)).compute()


def test_wrong_number_of_input_channels_names_input_size_and_the_module() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(
        ValueError,
        match=r"input_size=\(1, 8, 8\).*1 input channel.*'0' "
        r"\(Conv2d\) expects 3.*\(3, 8, 8\)",
    ):
        TheoreticalReceptiveField(model, (1, 8, 8)).compute()
    with pytest.raises(ValueError, match=r"'conv1' \(Conv2d\) expects 3"):
        TheoreticalReceptiveField(tm.resnet18(), (4, 32, 32)).compute()


def test_until_stops_before_layers_that_need_another_input_size() -> None:
    from dnnbrain_captum import digits_cnn

    model = digits_cnn(pretrained=False)
    with pytest.raises(RuntimeError):  # fc1 expects the 32 x 32 layout
        TheoreticalReceptiveField(model, (3, 48, 48)).compute()
    table = TheoreticalReceptiveField(model, (3, 48, 48)).compute(until="conv3")
    assert table["conv3"].size == (18, 18) and table["conv3"].output_size == (12, 12)
    assert "conv4" not in table and "fc1" not in table


# --------------------------------------------------------------- bad input


def test_bad_input(alexnet_rf: TheoreticalReceptiveField) -> None:
    rf = alexnet_rf
    with pytest.raises(ValueError, match="unknown layer 'conv6'.*conv5"):
        rf.find_region("conv6", (0, 0))
    with pytest.raises(ValueError, match=r"outside the 13x13 output.*\[0, 12\]"):
        rf.find_region("conv5", (13, 0))
    with pytest.raises(ValueError, match="outside"):
        rf.find_region("conv5", (0, -1))
    with pytest.raises(ValueError, match=r"fc1.*no spatial grid.*rows \[0, 224\)"):
        rf.find_region("fc1", (0, 0))
    with pytest.raises(TypeError, match="pair of ints"):
        rf.find_region("conv5", (1, 2, 3))
    with pytest.raises(TypeError, match="pair of ints"):
        rf.find_region("conv5", (1.0, 2))
    with pytest.raises(TypeError, match="nn.Module"):
        TheoreticalReceptiveField(lambda x: x, (3, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="3 ints"):
        TheoreticalReceptiveField(nn.Conv2d(1, 1, 1), (8, 8))
    with pytest.raises(ValueError, match=">= 1"):
        TheoreticalReceptiveField(nn.Conv2d(1, 1, 1), (1, 0, 8))
    with pytest.raises(ValueError, match="layer=None"):
        rf.find_region(None, (0, 0))


def test_module_that_did_not_run() -> None:
    model = tm.googlenet(aux_logits=True, init_weights=False).eval()
    rf = TheoreticalReceptiveField(model, (3, 96, 96))
    with pytest.raises(ValueError, match="did not run"):
        rf.find_region(model.aux1.conv, (0, 0))
    model.train()
    assert rf.compute()["aux1.conv"].spatial


# --------------------------------------------------------------- model untouched, text, speed


def test_model_untouched_and_no_hooks_left() -> None:
    model = tm.resnet18().train()
    model.layer1[0].conv1.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    TheoreticalReceptiveField(model, (3, 64, 64)).compute()
    with pytest.raises(UnsupportedOperationError):
        TheoreticalReceptiveField(nn.Sequential(model.conv1, nn.Unfold(2)), (3, 8, 8)).compute()
    assert model.training
    assert not model.layer1[0].conv1.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():  # num_batches_tracked included
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_text_table_lists_layers_and_aliases(alexnet_rf: TheoreticalReceptiveField) -> None:
    text = alexnet_rf.compute().to_text()
    lines = text.splitlines()
    assert lines[0].startswith("receptive fields of AlexNet for input (3, 224, 224)")
    row = next(line for line in lines if line.startswith("features.10"))
    assert row.split() == ["features.10", "conv5", "Conv2d", "13x13", "163x163", "16x16", "66x66"]
    assert any(line.split()[:2] == ["classifier.6", "fc3"] and "flat" in line for line in lines)
    assert str(alexnet_rf.compute()) == text


def test_resnet50_layer4() -> None:
    # speed lives in benchmarks/bench_receptive_field.py (no timing assertions in tests)
    table = TheoreticalReceptiveField(_meta(tm.resnet50), (3, 224, 224)).compute()
    assert table["layer4"].size == (427, 427)
