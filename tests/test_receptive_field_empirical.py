"""EmpiricalReceptiveField: a known square recovered with both engines and any grid, the
digits model's fields inside the theoretical ones, batches vs iterables, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from dnnbrain_captum import (
    EmpiricalReceptiveField,
    OccluderDiscrepancyMapping,
    UpsamplingActivationMapping,
    VanillaSaliencyImage,
    digits_cnn,
    digits_images,
)
from dnnbrain_captum.receptive_field import EmpiricalRF, occlusion_pixel_map
from tests.helpers.rf_models import SquareDetector, square_images

KERNEL, SIDE = 9, 5


@pytest.fixture(scope="module")
def detector() -> SquareDetector:
    return SquareDetector(KERNEL, SIDE).eval()


@pytest.fixture(scope="module")
def squares() -> torch.Tensor:
    return square_images(8, 30, 37, SIDE)  # not square, not 224


@pytest.fixture(scope="module")
def digits() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    images, labels = digits_images(n=24)
    return digits_cnn().eval(), images, labels


# --------------------------------------------------------------- a known square


def test_upsampling_engine_recovers_the_square(detector, squares) -> None:
    engine = UpsamplingActivationMapping(detector, "conv")
    rf = EmpiricalReceptiveField(engine)
    assert rf.theoretical((3, 30, 37)).size == (KERNEL, KERNEL)
    result = rf.attribute(squares, target=0)
    assert isinstance(result, EmpiricalRF)
    assert result.map.shape == (KERNEL, KERNEL)
    assert result.size.tolist() == [SIDE, SIDE]
    # the response profile around the best unit is centred in its theoretical field
    centre = KERNEL // 2
    assert int(result.map.argmax()) == centre * KERNEL + centre
    torch.testing.assert_close(result.map, result.map.flip(0).flip(1))


def test_occlusion_engine_finds_exactly_the_square(detector, squares) -> None:
    engine = OccluderDiscrepancyMapping(detector, "conv")
    result = EmpiricalReceptiveField(engine).attribute(
        squares,
        target=0,
        reduction="max",
        sliding_window_shapes=1,
        strides=1,
        perturbations_per_eval=512,
    )
    margin = (KERNEL - SIDE) // 2
    expected = torch.zeros(KERNEL, KERNEL)
    expected[margin : margin + SIDE, margin : margin + SIDE] = 3.0  # one unit weight x 3 channels
    torch.testing.assert_close(result.map, expected)
    assert result.size.tolist() == [SIDE, SIDE]


@pytest.mark.parametrize(("window", "stride"), [((3, 3), (2, 2)), ((2, 3), (3, 2)), (5, 2)])
def test_occlusion_coarse_grids_are_put_in_pixel_coordinates(
    detector, squares, window, stride
) -> None:
    engine = OccluderDiscrepancyMapping(detector, "conv")
    result = EmpiricalReceptiveField(engine).attribute(
        squares,
        target=0,
        reduction="max",
        sliding_window_shapes=window,
        strides=stride,
        perturbations_per_eval=512,
    )
    assert result.size.tolist() == [SIDE, SIDE]


def test_map_alignment_and_unit_targets(detector, squares) -> None:
    up = EmpiricalReceptiveField(UpsamplingActivationMapping(detector, "conv"))
    assert up.attribute(squares, target=0, alignment="map").size.tolist() == [SIDE, SIDE]
    # a fixed unit on noise images: the drop is the pixel value on the unit's square only
    noise = torch.rand(6, 3, 21, 21, generator=torch.Generator().manual_seed(1))
    occ = EmpiricalReceptiveField(OccluderDiscrepancyMapping(detector, "conv"))
    result = occ.attribute(
        noise, target=(0, 10, 10), sliding_window_shapes=1, strides=1, perturbations_per_eval=512
    )
    margin = (KERNEL - SIDE) // 2
    inside = torch.zeros(KERNEL, KERNEL, dtype=torch.bool)
    inside[margin : margin + SIDE, margin : margin + SIDE] = True
    # outside the square: zero to float32 rounding (batched and single convolutions may differ
    # in the last bits; the inside values are ~1, the tolerance 1e-5 of that)
    assert bool((result.map[inside] > 1e-2).all())
    assert bool((result.map[~inside].abs() <= 1e-5).all())
    assert result.size.tolist() == [SIDE, SIDE]


def test_occlusion_pixel_map_centres() -> None:
    grid = torch.arange(4.0).view(1, 2, 2)
    # windows 2 x 2, stride 2: centres at 0.5 and 2.5 on a 4 x 4 image
    pixels = occlusion_pixel_map(grid, (4, 4), (2, 2), (2, 2))
    torch.testing.assert_close(pixels[0, :, 0], torch.tensor([0.0, 0.5, 1.5, 2.0]))
    torch.testing.assert_close(pixels[0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))


# --------------------------------------------------------------- the digits model


def test_digits_fields_fit_in_the_theoretical_ones(digits) -> None:
    model, images, _ = digits
    theoretical = {}
    for layer in ["conv1", "conv2", "conv3", "conv4", "conv5"]:
        rf = EmpiricalReceptiveField(UpsamplingActivationMapping(model, layer))
        result = rf.attribute(images, target=3)
        size = rf.theoretical((3, 32, 32)).size
        theoretical[layer] = size
        assert tuple(result.map.shape) == size
        assert (result.size >= 1).all() and (result.size <= torch.tensor(size)).all(), layer
    assert theoretical["conv3"] == (18, 18) and theoretical["conv5"] == (34, 34)
    occ = EmpiricalReceptiveField(OccluderDiscrepancyMapping(model, "conv3"))
    result = occ.attribute(
        images[:8], target=3, sliding_window_shapes=4, strides=2, perturbations_per_eval=256
    )
    assert (result.size >= 1).all() and (result.size <= 18).all()


def test_batch_at_once_equals_iterable_of_batches(digits) -> None:
    model, images, labels = digits
    rf = EmpiricalReceptiveField(UpsamplingActivationMapping(model, "conv4"))
    whole = rf.attribute(images, target=7)
    listed = rf.attribute([images[:5], images[5:16], images[16:]], target=7)
    loader = DataLoader(TensorDataset(images, labels), batch_size=10)
    loaded = rf.attribute(loader, target=7)
    for other in (listed, loaded):
        torch.testing.assert_close(other.map, whole.map, rtol=0, atol=0)
        assert other.size.tolist() == whole.size.tolist()
    occ = EmpiricalReceptiveField(OccluderDiscrepancyMapping(model, "conv2"))
    kwargs = {"target": 1, "sliding_window_shapes": 6, "strides": 4}
    torch.testing.assert_close(
        occ.attribute(iter([images[:3], images[3:6]]), **kwargs).map,
        occ.attribute(images[:6], **kwargs).map,
        rtol=0,
        atol=0,
    )


def test_other_input_sizes_use_their_own_geometry(digits) -> None:
    model, images, _ = digits
    big = F.interpolate(images[:6], size=(48, 40), mode="bilinear", align_corners=False)
    rf = EmpiricalReceptiveField(UpsamplingActivationMapping(model, "conv3"))
    result = rf.attribute(big, target=2)  # fc1 would reject 48 x 40: analysis stops at conv3
    assert tuple(result.map.shape) == (18, 18)
    assert rf.theoretical((3, 48, 40)).output_size == (12, 10)
    with pytest.raises(ValueError, match="classifier.0.*no spatial output"):
        EmpiricalReceptiveField(UpsamplingActivationMapping(model, "fc1")).attribute(
            images[:2], target=0
        )


# --------------------------------------------------------------- bad input


def test_bad_input(digits, detector, squares) -> None:
    model, images, _ = digits
    with pytest.raises(TypeError, match="UpsamplingActivationMapping or Occluder"):
        EmpiricalReceptiveField(VanillaSaliencyImage(model, "conv3"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="engine"):
        EmpiricalReceptiveField("conv3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no layer"):
        EmpiricalReceptiveField(OccluderDiscrepancyMapping(model))
    rf = EmpiricalReceptiveField(UpsamplingActivationMapping(model, "conv3"))
    with pytest.raises(ValueError, match="size_threshold"):
        rf.attribute(images[:2], target=0, size_threshold=1.0)
    with pytest.raises(ValueError, match="alignment"):
        rf.attribute(images[:2], target=0, alignment="centre")
    with pytest.raises(ValueError, match="no images"):
        rf.attribute([], target=0)
    with pytest.raises(ValueError, match="iterable of batches"):
        rf.attribute([images[:2]], target=[0, 1])
    with pytest.raises(TypeError, match="iterable"):
        rf.attribute(3, target=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="4-D|shape"):
        rf.attribute(images[0], target=0)
    occ = EmpiricalReceptiveField(OccluderDiscrepancyMapping(detector, "conv"))
    with pytest.raises(ValueError, match="callable"):
        occ.attribute(squares, target=lambda out: out.mean((1, 2, 3)))
    with pytest.raises(ValueError, match="outside"):
        occ.attribute(squares[:1], target=(0, 40, 0), sliding_window_shapes=5, strides=5)


# --------------------------------------------------------------- windowed attention


@pytest.mark.parametrize(
    ("name", "layer"),
    [("swin", "features.1.1"), ("maxvit", "blocks.0.layers.0")],
)
def test_windowed_attention_aligns_on_each_units_exact_region(name: str, layer: str) -> None:
    from dnnbrain_captum import TheoreticalReceptiveField
    from tests.test_architectures import nhwc, raw_output, same, tiny_maxvit, tiny_swin

    model, to_grid = (tiny_swin(), nhwc) if name == "swin" else (tiny_maxvit(), same)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    engine = UpsamplingActivationMapping(model, layer)
    table = TheoreticalReceptiveField(model, (3, 32, 32)).compute()
    n_h, n_w = table[layer].output_size
    regions = {(i, j): table.find_region(layer, (i, j)) for i in range(n_h) for j in range(n_w)}
    extents = {(h1 - h0, w1 - w0) for (h0, h1), (w0, w1) in regions.values()}
    if name == "swin":  # shifted windows: units see 16 x 16 to 32 x 32 pixels
        assert table[layer].size is None and len(extents) > 1
    canvas = (max(e[0] for e in extents), max(e[1] for e in extents))
    maps = engine.attribute(x, target=2).double()
    with torch.no_grad():
        activations = to_grid(raw_output(model, layer, x))[:, 2]
    shifted = maps - maps.amin((1, 2), keepdim=True)

    def expected(best: list[tuple[int, int]]) -> torch.Tensor:
        total, count = torch.zeros(canvas, dtype=torch.float64), torch.zeros(canvas)
        for n, unit in enumerate(best):
            (h0, h1), (w0, w1) = regions[unit]
            total[: h1 - h0, : w1 - w0] += maps[n, h0:h1, w0:w1]
            count[: h1 - h0, : w1 - w0] += 1
        return torch.where(count > 0, total / count.clamp(min=1), 0.0).float()

    by_activation = [divmod(int(a.flatten().argmax()), n_w) for a in activations]
    by_map = [
        max(
            regions,
            key=lambda u: float(shifted[n, slice(*regions[u][0]), slice(*regions[u][1])].mean()),
        )
        for n in range(3)
    ]
    erf = EmpiricalReceptiveField(engine)
    torch.testing.assert_close(erf.attribute(x, target=2).map, expected(by_activation))
    torch.testing.assert_close(erf.attribute(x, target=2, alignment="map").map, expected(by_map))
