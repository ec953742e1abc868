"""Image loading, preprocessing and image data sets (dnnbrain_captum.io)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dnnbrain_captum.io import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderDataset,
    Preprocess,
    UnreadableImageError,
    check_images,
    find_images,
    load_image,
    preprocessing_for,
    read_image_list,
)
from dnnbrain_captum.models import digits_cnn
from tests.helpers.bad_images import UNREADABLE


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_load_image_exact_pixels(tmp_path: Path) -> None:
    array = np.zeros((2, 3, 3), dtype=np.uint8)
    array[0, 1] = (255, 0, 51)
    array[1, 2] = (0, 102, 0)
    image = load_image(_save(tmp_path / "x.png", array))
    assert image.dtype == torch.float32 and image.shape == (3, 2, 3)
    assert image[:, 0, 1].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert image[:, 1, 2].tolist() == pytest.approx([0.0, 0.4, 0.0])
    assert float(image.sum()) == pytest.approx(1.6)


def test_load_image_grey_and_rgba_become_rgb(tmp_path: Path) -> None:
    grey = load_image(_save(tmp_path / "g.png", np.full((4, 4), 128, dtype=np.uint8)))
    assert grey.shape == (3, 4, 4) and torch.allclose(grey, torch.full_like(grey, 128 / 255))
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 1] = 255
    rgba[..., 3] = 10
    out = load_image(_save(tmp_path / "a.png", rgba))
    assert out.shape == (3, 4, 4) and out[1].min() == 1.0 and out[0].max() == 0.0


def test_load_image_resize(tmp_path: Path) -> None:
    path = _save(tmp_path / "c.png", np.full((10, 20, 3), 200, dtype=np.uint8))
    out = load_image(path, size=(5, 7))
    assert out.shape == (3, 5, 7)
    assert torch.allclose(out, torch.full_like(out, 200 / 255), atol=1e-6)
    with pytest.raises(ValueError, match="size"):
        load_image(path, size=0)


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(UnreadableImageError, match="corrupt.jpg") as info:
        load_image(bad)
    assert isinstance(info.value, ValueError) and info.value.path == str(bad)
    # a truncated PNG (valid header, body cut off)
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    good = _save(tmp_path / "t.png", noise)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(UnreadableImageError, match="truncated.png"):
        load_image(truncated)


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_check_images_names_each_unreadable_file_and_reads_nothing_else(
    kind: str, tmp_path: Path
) -> None:
    good = _save(tmp_path / "good.png", np.full((8, 8, 3), 7, np.uint8))
    bad = tmp_path / "bad.png"
    UNREADABLE[kind](bad)
    missing = tmp_path / "missing.png"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    errors = check_images([good, bad, missing])
    assert [e.path for e in errors] == [str(bad), str(missing)]
    assert all(isinstance(e, UnreadableImageError) for e in errors)
    assert str(errors[1]) == f"cannot read image {missing}: no such file"
    with pytest.raises(UnreadableImageError) as info:  # load_image says the same
        load_image(bad)
    assert str(errors[0]) == str(info.value)
    if kind == "decompression bomb":
        assert "decompression bomb" in str(errors[0])
    assert check_images([good]) == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_io_public_names_import_from_dnnbrain_captum_io() -> None:
    import dnnbrain_captum.io as io_module

    for name in io_module.__all__:
        assert getattr(io_module, name) is not None, name


def test_find_images_files_folders_order_and_errors(tmp_path: Path) -> None:
    tile = np.zeros((2, 2, 3), dtype=np.uint8)
    for name in ("b.png", "a.jpg", "sub/c.bmp", "sub/deeper/d.PNG"):
        _save(tmp_path / "set" / name, tile)
    (tmp_path / "set" / "readme.txt").write_text("not an image")
    found = find_images(tmp_path / "set")
    rel = [p.relative_to(tmp_path / "set").as_posix() for p in found]
    assert rel == ["a.jpg", "b.png", "sub/c.bmp", "sub/deeper/d.PNG"]
    flat = find_images(tmp_path / "set", recursive=False)
    assert [p.name for p in flat] == ["a.jpg", "b.png"]
    # files keep the given order, mixed with folders
    mixed = find_images([tmp_path / "set" / "b.png", str(tmp_path / "set" / "sub")])
    assert [p.name for p in mixed] == ["b.png", "c.bmp", "d.PNG"]
    with pytest.raises(FileNotFoundError, match="nope"):
        find_images([tmp_path / "set", tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        find_images(tmp_path / "empty")
    with pytest.raises(ValueError, match="no image paths"):
        find_images([])


def test_preprocess_steps() -> None:
    image = torch.arange(3 * 4 * 6, dtype=torch.float32).reshape(3, 4, 6) / 72
    # centre crop only
    cropped = Preprocess(crop=(2, 2))(image)
    assert torch.equal(cropped, image[:, 1:3, 2:4])
    # shorter side to 2 keeps the aspect ratio 4x6 -> 2x3
    assert Preprocess(size=2)(image).shape == (3, 2, 3)
    # normalisation
    norm = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))(torch.ones(3, 1, 1))
    assert norm.flatten().tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="both mean and std"):
        Preprocess(mean=(0.5,))
    with pytest.raises(ValueError, match="larger than the image"):
        Preprocess(crop=10)(image)


def test_preprocessing_for_models() -> None:
    assert preprocessing_for(digits_cnn(pretrained=False)) == preprocessing_for("digits")
    imagenet = preprocessing_for("alexnet")
    out = imagenet(torch.ones(3, 10, 10))
    assert out.shape == (3, 224, 224)
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert out[:, 5, 5].tolist() == pytest.approx(expected, rel=1e-5)


def test_dataset_items_ids_and_labels(tmp_path: Path) -> None:
    for k in range(3):
        _save(tmp_path / "f" / f"im{k}.png", np.full((40, 40, 3), 50 * k, dtype=np.uint8))
    _save(tmp_path / "f" / "sub" / "z.png", np.zeros((8, 8, 3), dtype=np.uint8))
    data = ImageFolderDataset(tmp_path / "f", transform=preprocessing_for("digits"))
    assert len(data) == 4
    assert data.ids == ["im0.png", "im1.png", "im2.png", "sub/z.png"]
    image, index = data[2]
    assert index == 2 and image.shape == (3, 32, 32)
    assert torch.allclose(image, torch.full_like(image, 100 / 255), atol=1e-6)
    assert data[-1][1] == 3
    with pytest.raises(IndexError):
        data[4]
    with pytest.raises(ValueError, match="labels has 2 entries"):
        ImageFolderDataset(tmp_path / "f", labels=[1, 2])


def test_dataset_unreadable_item_is_named_and_others_load(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    (tmp_path / "b.png").write_bytes(b"garbage")
    _save(tmp_path / "c.png", np.zeros((4, 4, 3), dtype=np.uint8))
    data = ImageFolderDataset(tmp_path)
    assert data[0][0].shape == (3, 4, 4) and data[2][0].shape == (3, 4, 4)
    with pytest.raises(UnreadableImageError, match="b.png"):
        data[1]


def test_csv_plain_and_dnnbrain_stim(tmp_path: Path) -> None:
    for name in ("x.png", "y.png"):
        _save(tmp_path / "imgs" / name, np.zeros((4, 4, 3), dtype=np.uint8))
    plain = tmp_path / "list.csv"
    plain.write_text("path,label\nimgs/x.png,4\nimgs/y.png,9\n")
    data = ImageFolderDataset.from_csv(plain)
    assert [p.name for p in data.paths] == ["x.png", "y.png"] and data.labels == [4, 9]
    assert data.ids == ["x.png", "y.png"] and data[1][0].shape == (3, 4, 4)

    stim = tmp_path / "set.stim.csv"
    stim.write_text("type=image\npath=imgs\ndata=stimID,label\ny.png,1\nx.png,2\n")
    paths, labels = read_image_list(stim)
    assert paths == [tmp_path / "imgs" / "y.png", tmp_path / "imgs" / "x.png"]
    assert labels == [1, 2]

    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("stimID\nimgs/x.png\n")
    assert read_image_list(nolabel) == ([tmp_path / "imgs" / "x.png"], None)

    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nimgs/x.png,cat\n")
    with pytest.raises(ValueError, match="'cat'"):
        read_image_list(bad)
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("name\nimgs/x.png\n")
    with pytest.raises(ValueError, match="no path column"):
        read_image_list(nocol)
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        read_image_list(tmp_path / "absent.csv")
    # a listed file that is missing is reported when the item is read, by name
    missing = tmp_path / "missing.csv"
    missing.write_text("path\nimgs/x.png\nimgs/gone.png\n")
    data = ImageFolderDataset.from_csv(missing)
    with pytest.raises(UnreadableImageError, match="gone.png"):
        data[1]


def test_preprocessing_follows_the_model() -> None:
    import torchvision

    from dnnbrain_captum.io import class_names

    assert preprocessing_for("digits") == Preprocess(size=32, crop=32)
    for name, crop in (("alexnet", 224), ("vit_b_16", 224), ("inception_v3", 299)):
        step = preprocessing_for(name)
        assert step.crop == crop and step.size > crop, name
        assert step.mean == pytest.approx((0.485, 0.456, 0.406))
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    assert preprocessing_for("resnet50", weights=weights).size == 232  # the weights' own
    with pytest.raises(ValueError, match="unknown model 'alexnett'.*close names: alexnet"):
        preprocessing_for("alexnett")
    names = class_names(torchvision.models.AlexNet_Weights.IMAGENET1K_V1)
    assert len(names) == 1000 and names[0] == "tench"
    assert class_names(None) is None


def test_preprocess_crops_instead_of_squashing() -> None:
    wide = torch.arange(2 * 4 * 8, dtype=torch.float32).view(2, 4, 8)
    cropped = Preprocess(size=4, crop=4)(wide)
    torch.testing.assert_close(cropped, wide[:, :, 2:6])
