"""The ``dnnbrain-captum`` command, run in-process through ``main([...])``.

Every subcommand runs end to end on the bundled model in a temporary folder; its arrays must
equal the library call on the same images. Every user error exits with status 2 after one
line on stderr, and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dnnbrain_captum import cli
from dnnbrain_captum.attr import (
    GuidedSaliencyImage,
    OccluderDiscrepancyMapping,
    UpsamplingActivationMapping,
    VanillaSaliencyImage,
)
from dnnbrain_captum.io import Preprocess, find_images, load_image
from dnnbrain_captum.models import digits_cnn, digits_images
from tests.helpers import bad_images

ROOT = Path(__file__).resolve().parents[1]
PROG_NAME = "dnnbrain-captum"


def run(args: Sequence[str]) -> int:
    """``main(args)``; the exit status (0 when it returns)."""
    try:
        return cli.main([str(a) for a in args])
    except SystemExit as exit_:
        return int(exit_.code or 0)


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three held-out digits saved as PNG files (one in a sub-folder)."""
    folder = tmp_path_factory.mktemp("digits")
    images, _ = digits_images(n=3)
    (folder / "sub").mkdir()
    for k in range(3):
        array = (images[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        target = folder / ("sub" if k == 2 else "") / f"d{k}.png"
        Image.fromarray(array).save(target)
    return folder


def loaded(folder: Path) -> torch.Tensor:
    """The images as the CLI reads them for the digits model."""
    resize = Preprocess(size=(32, 32))
    return torch.stack([resize(load_image(p)) for p in find_images(folder)])


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return digits_cnn()


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def check_manifest(out: Path, arrays: Sequence[str], n_figures: int) -> dict:
    record = json.loads((out / "results.json").read_text())
    assert set(record["files"]) == files_in(out)
    for name in arrays:
        assert name in record["files"]
    pngs = [f for f in record["files"] if f.endswith(".png")]
    assert len(pngs) == n_figures
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return record


# ----------------------------------------------------------------------------- end to end


def test_saliency_layer_channel(tmp_path: Path, digit_folder: Path, model) -> None:
    out = tmp_path / "sal"
    args = ["saliency", digit_folder, "--no-stream", "--layer", "conv5", "--channel", 3]
    assert run([*args, "--out", out]) == 0
    record = check_manifest(out, ["result.npy"], 3)
    assert record["images"] == [str(p) for p in find_images(digit_folder)]
    expected = VanillaSaliencyImage(model, "conv5").attribute(loaded(digit_folder), target=3)
    np.testing.assert_array_equal(np.load(out / "result.npy"), expected.numpy())


def test_saliency_guided_smoothgrad_on_class(tmp_path: Path, digit_folder: Path, model) -> None:
    out = tmp_path / "sg"
    args = ["saliency", digit_folder, "--no-stream", "--method", "guided", "--smooth", 3]
    assert run([*args, "--sigma-multiplier", 0.2, "--out", out]) == 0
    check_manifest(out, ["result.npy"], 3)
    from captum.attr import NoiseTunnel

    from dnnbrain_captum import smoothgrad_stdev

    x = loaded(digit_folder)
    classes = model(x).argmax(1).tolist()
    expected = []
    for k in range(3):
        torch.manual_seed(0)
        expected.append(
            NoiseTunnel(GuidedSaliencyImage(model)).attribute(
                x[k : k + 1],
                nt_type="smoothgrad",
                nt_samples=3,
                stdevs=smoothgrad_stdev(x[k : k + 1], 0.2),
                target=[classes[k]],
                abs=False,
            )
        )
    np.testing.assert_allclose(
        np.load(out / "result.npy"), torch.cat(expected).numpy(), rtol=1e-6, atol=1e-7
    )
    assert json.loads((out / "results.json").read_text())["targets"] == classes


def test_occlusion(tmp_path: Path, digit_folder: Path, model) -> None:
    out = tmp_path / "occ"
    args = [
        "occlusion",
        digit_folder,
        "--no-stream",
        "--layer",
        "conv4",
        "--channel",
        7,
        "--window",
        6,
        4,
    ]
    assert run([*args, "--stride", 3, "--baseline", 0.5, "--out", out]) == 0
    check_manifest(out, ["result.npy"], 3)
    expected = OccluderDiscrepancyMapping(model, "conv4").attribute(
        loaded(digit_folder),
        target=7,
        sliding_window_shapes=(6, 4),
        strides=(3, 3),
        baselines=0.5,
    )
    result = np.load(out / "result.npy")
    assert result.shape == (3, 9, 10)
    np.testing.assert_allclose(result, expected.numpy(), rtol=1e-6, atol=1e-6)


def test_upsample(tmp_path: Path, digit_folder: Path, model) -> None:
    out = tmp_path / "up"
    args = [
        "upsample",
        digit_folder,
        "--no-stream",
        "--digits",
        2,
        "--layer",
        "features.10",
        "--channel",
        5,
    ]
    assert run([*args, "--threshold", 0.5, "--interpolate", "bilinear", "--out", out]) == 0
    check_manifest(out, ["result.npy"], 5)
    digits, _ = digits_images(n=2)
    x = torch.cat([loaded(digit_folder), digits])
    expected = UpsamplingActivationMapping(model, "conv5").attribute(
        x, target=5, interpolate_mode="bilinear", threshold=0.5
    )
    np.testing.assert_array_equal(np.load(out / "result.npy"), expected.numpy())


def test_rf_table_and_region(tmp_path: Path, model) -> None:
    from dnnbrain_captum.receptive_field import TheoreticalReceptiveField

    out = tmp_path / "rf"
    assert run(["rf", "--digits", 2, "--layer", "conv3", "--unit", 0, 5, "--out", out]) == 0
    check_manifest(out, ["region.npy", "receptive_field.json", "receptive_field.txt"], 2)
    analysis = TheoreticalReceptiveField(model, (3, 32, 32))
    np.testing.assert_array_equal(
        np.load(out / "region.npy"), np.array(analysis.find_region("conv3", (0, 5)))
    )
    rows = {row["layer"]: row for row in json.loads((out / "receptive_field.json").read_text())}
    table = analysis.compute()
    assert rows["features.10"]["alias"] == "conv5"
    for path, row in rows.items():
        entry = table[path]
        assert row["size"] == (None if entry.size is None else list(entry.size))
        assert row["output_size"] == (
            None if entry.output_size is None else list(entry.output_size)
        )
    assert (out / "receptive_field.txt").read_text().strip() == table.to_text()
    # no images: the table, and one figure on a grey canvas for the centre unit
    out = tmp_path / "rf2"
    assert run(["rf", "--layer", "conv5", "--out", out]) == 0
    assert files_in(out) >= {"receptive_field.png", "region.npy"}
    np.testing.assert_array_equal(
        np.load(out / "region.npy"), np.array(analysis.find_region("conv5", (4, 4)))
    )


def test_synthesize_channels_and_classes(tmp_path: Path, model) -> None:
    from dnnbrain_captum.optim import SynthesisImage, random_images

    out = tmp_path / "syn"
    args = ["synthesize", "--layer", "conv5", "--channel", "2,5", "--n-iter", 3]
    assert run([*args, "--tv", 0.01, "--out", out]) == 0
    check_manifest(out, ["result.npy", "activation.npy"], 1)
    expected = SynthesisImage(model, "conv5").attribute(
        random_images(2, 32),
        target=[2, 5],
        n_iter=3,
        regularizers={"tv": 0.01},
        return_history=True,
    )
    np.testing.assert_allclose(
        np.load(out / "result.npy"), expected.images.numpy(), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        np.load(out / "activation.npy"), expected.activation.numpy(), rtol=1e-5, atol=1e-6
    )
    # classes of the output, from one given start image, DNNBrain's pixel preset
    out = tmp_path / "syn2"
    args = ["synthesize", "--digits", 1, "--channel", "3-4", "--preset", "dnnbrain"]
    assert run([*args, "--n-iter", 2, "--unit", 0, 0, "--out", out]) == 2  # unit needs a layer
    assert run([*args, "--n-iter", 2, "--out", out]) == 0
    start = digits_images(n=1)[0].expand(2, -1, -1, -1)
    expected = SynthesisImage(model).attribute(start, target=[3, 4], preset="dnnbrain", n_iter=2)
    np.testing.assert_allclose(np.load(out / "result.npy"), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_mask(tmp_path: Path, model) -> None:
    from dnnbrain_captum.attr.masked import MaskedImage

    out = tmp_path / "mask"
    args = ["mask", "--digits", 2, "--layer", "conv4", "--channel", 13, "--unit", 2, 3]
    assert run([*args, "--filter-sigma", 0.5, "--out", out]) == 0
    record = check_manifest(out, ["result.npy", "masks.npy"], 2)
    expected = MaskedImage(model, "conv4").attribute(
        digits_images(n=2)[0], target=(13, 2, 3), filter_sigma=0.5, return_masks=True
    )
    np.testing.assert_allclose(np.load(out / "result.npy"), expected.images.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.load(out / "masks.npy"), expected.masks.numpy(), atol=1e-6)
    assert record["n_erosions"] == expected.n_erosions.tolist() == [1, 2]  # keep + border defaults
    assert record["targets"] == [[13, 2, 3], [13, 2, 3]]
    assert record["warnings"] == []


def test_mask_of_a_synthesis_run(tmp_path: Path, model, capsys) -> None:
    """Walker et al.: synthesise an image per conv3 unit, then mask each for its own unit
    (``mask --synthesis DIR``), equal to the two library calls."""
    from dnnbrain_captum.attr.masked import MaskedImage
    from dnnbrain_captum.optim import SynthesisImage, random_images

    mei = tmp_path / "mei"
    synth = ["synthesize", "--layer", "conv3", "--channel", "0,5", "--unit", 4, 4]
    assert run([*synth, "--n-iter", 4, "--seed", 2, "--quiet", "--out", mei]) == 0
    assert run(["mask", "--synthesis", mei, "--quiet", "--out", tmp_path / "m"]) == 0
    record = check_manifest(tmp_path / "m", ["result.npy", "masks.npy"], 2)
    units = [(0, 4, 4), (5, 4, 4)]
    images = SynthesisImage(model, "conv3").attribute(
        random_images(2, 32, seed=2), target=units, n_iter=4, seed=2
    )
    np.testing.assert_allclose(np.load(mei / "result.npy"), images.numpy(), atol=1e-5)
    expected = MaskedImage(model, "conv3").attribute(
        torch.from_numpy(np.load(mei / "result.npy")), target=units, return_masks=True
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "m" / "result.npy"), expected.images.numpy(), atol=1e-6
    )
    assert record["targets"] == [[0, 4, 4], [5, 4, 4]] and record["layer"] == "conv3"
    assert record["n_erosions"] == expected.n_erosions.tolist()
    assert record["images"] == [f"{mei / 'result.npy'}[{k}]" for k in range(2)]
    # options that would contradict the synthesis are refused, nothing written
    for extra in (["--layer", "conv5"], ["--digits", 1], ["--channel", 3], ["--seed", 1]):
        out = tmp_path / "refused"
        assert run(["mask", "--synthesis", mei, *extra, "--out", out]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and extra[0] in err[0], err
        assert not out.exists()
    assert run(["mask", "--synthesis", tmp_path / "m", "--out", tmp_path / "x"]) == 2
    assert "holds no synthesize run" in capsys.readouterr().err


def test_library_warnings_become_notes(tmp_path: Path, capsys) -> None:
    out = tmp_path / "mask"
    assert run(["mask", "--digits", 1, "--layer", "conv5", "--channel", 43, "--out", out]) == 0
    record = json.loads((out / "results.json").read_text())
    assert len(record["warnings"]) == 1 and "not positive" in record["warnings"][0]
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"dnnbrain-captum mask: note: {record['warnings'][0]}"


def test_minimal_parcels_and_components(tmp_path: Path, model) -> None:
    from dnnbrain_captum.attr.minimal import MinimalParcelImage
    from dnnbrain_captum.attr.minimal_component import MinimalComponentImage

    x, _ = digits_images(n=2)
    classes = model(x).argmax(1).tolist()
    out = tmp_path / "parcels"
    args = ["minimal", "--digits", 2, "--method", "slic", "--segment", "n_segments=12"]
    assert run([*args, "--search", "removal", "--out", out]) == 0
    record = check_manifest(out, ["result.npy", "kept.npy", "parcels.npy"], 2)
    expected = MinimalParcelImage(model).attribute(
        x,
        target=classes,
        segmentation="slic",
        segmentation_kwargs={"n_segments": 12},
        search_criterion="removal",
    )
    np.testing.assert_array_equal(np.load(out / "result.npy"), expected.images.numpy())
    np.testing.assert_array_equal(np.load(out / "kept.npy"), expected.masks.numpy())
    np.testing.assert_array_equal(np.load(out / "parcels.npy"), expected.labels.numpy())
    assert record["n_selected"] == expected.n_selected.tolist()
    out = tmp_path / "components"
    args = ["minimal", "--digits", 2, "--layer", "conv3", "--channel", 4, "--method", "pca"]
    assert run([*args, "--patch-size", 4, "--search", "threshold", "--out", out]) == 0
    check_manifest(out, ["result.npy", "selected.npy"], 2)
    expected = MinimalComponentImage(model, "conv3").attribute(
        x, target=4, decomposition="pca", patch_size=4, search_criterion="threshold"
    )
    np.testing.assert_allclose(np.load(out / "result.npy"), expected.images.numpy(), atol=1e-6)
    np.testing.assert_array_equal(np.load(out / "selected.npy"), expected.selected.numpy())


def test_empirical_rf_both_engines(tmp_path: Path, model) -> None:
    from dnnbrain_captum.receptive_field import EmpiricalReceptiveField

    x, _ = digits_images(n=5)
    out = tmp_path / "erf"
    args = ["empirical-rf", "--digits", 5, "--layer", "conv3", "--channel", 5]
    assert run([*args, "--batch-size", 2, "--threshold", 0.5, "--out", out]) == 0
    check_manifest(out, ["result.npy", "empirical_rf.json"], 1)
    expected = EmpiricalReceptiveField(UpsamplingActivationMapping(model, "conv3")).attribute(
        x, target=5, threshold=0.5
    )
    np.testing.assert_allclose(np.load(out / "result.npy"), expected.map.numpy(), atol=1e-6)
    summary = json.loads((out / "empirical_rf.json").read_text())
    assert summary["size"] == expected.size.tolist()
    assert summary["theoretical_size"] == [18, 18] and summary["n_images"] == 5
    out = tmp_path / "erf2"
    args = ["empirical-rf", "--digits", 2, "--layer", "conv5", "--channel", 1]
    assert (
        run(
            [
                *args,
                "--engine",
                "occlusion",
                "--window",
                6,
                "--stride",
                4,
                "--alignment",
                "map",
                "--out",
                out,
            ]
        )
        == 0
    )
    expected = EmpiricalReceptiveField(OccluderDiscrepancyMapping(model, "conv5")).attribute(
        x[:2], target=1, alignment="map", sliding_window_shapes=(6, 6), strides=(4, 4)
    )
    np.testing.assert_allclose(np.load(out / "result.npy"), expected.map.numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quick demo run (two digits), shared by the page checks."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert run(["demo", "--out", out, "--n-images", 2, "--quick", "--quiet"]) == 0
    return out


def test_demo_index_references_existing_images(demo_out: Path) -> None:
    out = demo_out

    class Panels(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.images: list[list[str]] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag == "section":
                self.images.append([])
            if tag == "img":
                self.images[-1].append(dict(attrs)["src"])

    parser = Panels()
    parser.feed((out / "index.html").read_text())
    expected = [
        "saliency",
        "occlusion",
        "upsample",
        "synthesize",
        "mask",
        "minimal",
        "rf",
        "empirical-rf",
    ]
    assert set(expected) <= set(cli.SUBCOMMANDS)
    assert len(parser.images) == 11  # three saliency panels, two minimal-image panels
    for sources in parser.images:
        assert len(sources) in (1, 2), sources  # one figure, or one per sample digit
        for source in sources:
            assert (out / source).is_file(), source
            assert not source.startswith(("/", "http"))
    record = json.loads((out / "results.json").read_text())
    assert set(record["files"]) == files_in(out)
    held_out = digits_images()[0].shape[0]
    page = (out / "index.html").read_text()
    assert f"on the {held_out} held-out digits" in page
    # Walker et al.'s pipeline: six conv3 units synthesised, then masked; its command shown
    assert "Synthesise, then mask" in page and "mask_synthesis.png" in record["files"]
    assert "mask --synthesis mei/" in page and "--channel 0,5,9,14,20,33 --unit 4 4" in page


def test_demo_page_in_a_real_browser(demo_out: Path, tmp_path: Path) -> None:
    """Headless Chromium opens index.html: every image decodes, no broken link, no console
    error, and a screenshot of the whole page is taken."""
    from tests.helpers.browser import check_page

    report = check_page(demo_out / "index.html", tmp_path / "demo.png")
    tags = (demo_out / "index.html").read_text().count("<img ")
    assert len(report.images) == tags >= 11  # every panel has at least one figure
    assert [image.src for image in report.images if not image.decoded] == []
    assert report.broken_links == []
    assert report.console_errors == []
    with Image.open(report.screenshot) as shot:
        assert shot.format == "PNG" and shot.width == 1200 and shot.height > 2000


def test_browser_helper_sees_broken_images_links_and_errors(tmp_path: Path) -> None:
    """The same helper on a page with every fault: each one is reported."""
    from tests.helpers.browser import check_page

    Image.new("RGB", (4, 3), "red").save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_text("not a png")
    (tmp_path / "page.html").write_text(
        '<html><body id="top"><img src="good.png"><img src="bad.png"><img src="gone.png">'
        '<a href="#top">ok</a><a href="#nowhere">frag</a><a href="missing.html">m</a>'
        '<a href="https://example.org/">web</a><script>console.error("boom")</script>'
        "</body></html>"
    )
    report = check_page(tmp_path / "page.html", tmp_path / "shot.png")
    decoded = {Path(i.src).name: i.decoded for i in report.images}
    assert decoded == {"good.png": True, "bad.png": False, "gone.png": False}
    assert sorted(Path(link).name for link in report.broken_links) == [
        "gone.png",
        "missing.html",
        "page.html#nowhere",
    ]
    assert report.external_links == ["https://example.org/"]
    assert "boom" in report.console_errors
    assert any("gone.png" in error for error in report.console_errors)
    with Image.open(report.screenshot) as shot:
        assert shot.format == "PNG"


def test_overwrite_replaces_previous_results(tmp_path: Path) -> None:
    out = tmp_path / "res"
    assert run(["upsample", "--digits", 3, "--layer", "conv3", "--channel", 1, "--out", out]) == 0
    assert len([f for f in files_in(out) if f.endswith(".png")]) == 3
    (out / "mine.txt").write_text("keep me")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # refused without --overwrite: nothing changes
    assert run(["upsample", "--digits", 1, "--layer", "conv3", "--channel", 2, "--out", out]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    args = ["upsample", "--digits", 1, "--layer", "conv3", "--channel", 2, "--out", out]
    assert run([*args, "--overwrite"]) == 0
    assert files_in(out) == {
        "mine.txt",
        "results.json",
        "result.npy",
        "000_digit0_label6_upsample.png",
    }
    assert np.load(out / "result.npy").shape == (1, 32, 32)


def test_out_may_be_an_existing_empty_folder_and_no_figures(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert run(["saliency", "--digits", 2, "--no-figures", "--out", out]) == 0
    assert files_in(out) == {"result.npy", "results.json"}


def test_weights_file_and_factory_model(tmp_path: Path, model) -> None:
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    args = ["upsample", "--digits", 2, "--layer", "conv2", "--channel", 0]
    assert run([*args, "--weights", weights, "--out", tmp_path / "a"]) == 0
    assert run([*args, "--out", tmp_path / "b"]) == 0
    np.testing.assert_array_equal(
        np.load(tmp_path / "a" / "result.npy"), np.load(tmp_path / "b" / "result.npy")
    )
    args = ["saliency", "--digits", 1, "--model", "tests.helpers.models:TinyConvNet"]
    assert (
        run(
            [*args, "--image-size", 12, "--layer", "conv2", "--channel", 1, "--out", tmp_path / "c"]
        )
        == 0
    )
    assert np.load(tmp_path / "c" / "result.npy").shape == (1, 3, 12, 12)


def test_torchvision_model_by_name(tmp_path: Path) -> None:
    args = ["upsample", "--digits", 1, "--model", "alexnet", "--layer", "conv5"]
    assert run([*args, "--channel", 255, "--out", tmp_path / "tv", "--quiet"]) == 0
    assert np.load(tmp_path / "tv" / "result.npy").shape == (1, 224, 224)


def test_torchvision_weight_name_uses_the_hub_cache_only(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(1)
    reference = torchvision.models.squeezenet1_1().eval()
    torch.save(reference.state_dict(), cached)  # stands in for the downloaded file
    args = ["upsample", "--digits", 1, "--model", "squeezenet1_1", "--layer", "features.3"]
    for name in ("DEFAULT", "IMAGENET1K_V1", "SqueezeNet1_1_Weights.IMAGENET1K_V1"):
        out = tmp_path / name
        assert run([*args, "--weights", name, "--channel", 7, "--out", out, "--quiet"]) == 0
        x = torch.nn.functional.interpolate(
            digits_images(n=1)[0], size=(224, 224), mode="bilinear", antialias=True
        )
        x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]
        ).view(1, 3, 1, 1)
        expected = UpsamplingActivationMapping(reference, "features.3").attribute(x, target=7)
        np.testing.assert_allclose(np.load(out / "result.npy"), expected.numpy(), atol=1e-4)


@pytest.mark.parametrize("command", sorted(cli.SUBCOMMANDS))
def test_every_subcommand_has_help_with_an_example(command: str, capsys) -> None:
    assert run([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "example:" in text and f"dnnbrain-captum {command}" in text
    if "--channel" in text:
        assert "0-BASED" in text


# ----------------------------------------------------------------------------- errors


def _not_an_image(tmp: Path) -> list[str]:
    bad = tmp / "broken.png"
    bad.write_text("not a png")
    return [str(bad), "--layer", "conv5", "--channel", "0"]


ERRORS = {
    "missing image": (
        lambda tmp: [str(tmp / "nope.png"), "--layer", "conv5", "--channel", "0"],
        "nope.png",
    ),
    "unreadable image": (_not_an_image, "broken.png"),
    "unknown layer": (lambda tmp: ["--digits", "1", "--layer", "conv9", "--channel", "0"], "conv9"),
    "unknown model": (
        lambda tmp: ["--digits", "1", "--model", "alexnett", "--layer", "conv5", "--channel", "0"],
        "alexnett",
    ),
    "bad factory": (
        lambda tmp: [
            "--digits",
            "1",
            "--model",
            "no_such_pkg.mod:make",
            "--layer",
            "x",
            "--channel",
            "0",
        ],
        "no_such_pkg",
    ),
    "channel out of range": (
        lambda tmp: ["--digits", "1", "--layer", "conv5", "--channel", "64"],
        "--channel 64",
    ),
    "negative channel": (
        lambda tmp: ["--digits", "1", "--layer", "conv1", "--channel", "-1"],
        "--channel -1",
    ),
    "missing weights file": (
        lambda tmp: [
            "--digits",
            "1",
            "--weights",
            str(tmp / "w.pt"),
            "--layer",
            "conv5",
            "--channel",
            "0",
        ],
        "w.pt",
    ),
    "weights not cached": (
        lambda tmp: [
            "--digits",
            "1",
            "--model",
            "alexnet",
            "--weights",
            "IMAGENET1K_V1",
            "--layer",
            "conv5",
            "--channel",
            "0",
        ],
        "IMAGENET1K_V1",
    ),
    "no images": (lambda tmp: ["--layer", "conv5", "--channel", "0"], "images"),
    "missing layer": (lambda tmp: ["--digits", "1", "--channel", "0"], "--layer"),
    "bad option value": (
        lambda tmp: ["--digits", "1", "--layer", "conv5", "--channel", "three"],
        "three",
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_user_errors_exit_2_with_one_line_and_write_nothing(
    case: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # nothing cached there
    make_args, culprit = ERRORS[case]
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    before = files_in(work)
    assert run(["upsample", *make_args(tmp_path), "--out", out]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert culprit in lines[0] and "error" in lines[0]
    assert "Traceback" not in captured.err
    assert files_in(work) == before  # no output folder, no temporary folder left


def test_unit_outside_the_map(tmp_path: Path, capsys) -> None:
    assert run(["rf", "--layer", "conv3", "--unit", 8, 0, "--out", tmp_path / "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--unit 8 0" in err[0] and "8x8" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_output_folder_not_writable(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert run(["saliency", "--digits", 1, "--out", blocker / "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not writable" in err[0] and "file.txt" in err[0]
    assert run(["saliency", "--digits", 1, "--out", blocker]) == 2
    assert "is a file" in capsys.readouterr().err
    assert files_in(tmp_path) == {"file.txt"}


def test_failure_during_the_run_leaves_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise ValueError("simulated failure\nwith two lines")

    monkeypatch.setattr(cli.saliency, "saliency_arrays", boom)
    out = tmp_path / "out"
    assert run(["saliency", "--digits", 1, "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dnnbrain-captum saliency: error: simulated failure with two lines"]
    assert list(tmp_path.iterdir()) == []


def test_interrupt_leaves_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.saliency, "saliency_arrays", interrupted)
    assert run(["saliency", "--digits", 1, "--out", tmp_path / "out"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "dnnbrain-captum saliency: interrupted, nothing written"
    ]
    assert list(tmp_path.iterdir()) == []


def test_progress_bars_on_a_terminal(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    args = ["occlusion", "--digits", 2, "--batch-size", 1, "--window", 16, "--stride", 8]
    assert run([*args, "--out", tmp_path / "a"]) == 0
    err = capsys.readouterr().err
    assert "occlusion: 100%" in err and "2/2" in err  # the bar over images
    assert run([*args, "--out", tmp_path / "b", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_existing_results_are_refused_before_any_work(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.npy").write_bytes(b"x")
    assert run(["demo", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and str(out) in err[0]
    assert files_in(out) == {"old.npy"}


# ----------------------------------------------------------------------------- entry point


def test_entry_point_is_declared_and_runs_as_a_program(tmp_path: Path) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dnnbrain-captum = "dnnbrain_captum.cli:main"$', pyproject, re.M)
    from importlib.metadata import entry_points

    installed = [e for e in entry_points(group="console_scripts") if e.name == "dnnbrain-captum"]
    for entry in installed:
        assert entry.value == "dnnbrain_captum.cli:main"
    program = (
        [str(Path(sys.executable).with_name("dnnbrain-captum"))]
        if installed and Path(sys.executable).with_name("dnnbrain-captum").exists()
        else [sys.executable, "-m", "dnnbrain_captum.cli"]
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    missing = tmp_path / "missing.jpg"
    done = subprocess.run(
        [*program, "saliency", str(missing), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"dnnbrain-captum saliency: error: no such file or folder: {missing}"
    ]
    assert not (tmp_path / "o").exists()


def test_version(capsys) -> None:
    assert run(["--version"]) == 0
    assert re.match(r"dnnbrain-captum \d", capsys.readouterr().out)


# ----------------------------------------------------------------------------- streamed folders


@pytest.fixture(scope="module")
def five_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five held-out digits as PNG files (the last in a sub-folder)."""
    folder = tmp_path_factory.mktemp("five")
    images, _ = digits_images(n=5)
    (folder / "sub").mkdir()
    for k in range(5):
        array = (images[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / ("sub" if k == 4 else "") / f"d{k}.png")
    return folder


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_stream_folder_equals_library_run_over(
    tmp_path: Path, five_digits: Path, model, capsys
) -> None:
    from dnnbrain_captum import read_results, run_over
    from dnnbrain_captum.io import ImageFolderDataset, preprocessing_for

    out = tmp_path / "sal"
    args = ["saliency", five_digits, "--layer", "conv5", "--channel", 3, "--batch-size", 2]
    assert run([*args, "--max-figures", 2, "--out", out]) == 0
    assert "5 computed, 0 reused" in capsys.readouterr().err
    record = json.loads((out / "results.json").read_text())
    assert record["mode"] == "stream" and record["targets"] == 3
    assert record["images"] == [str(p) for p in find_images(five_digits)]
    assert (
        set(record["files"])
        == files_in(out)
        == {
            "results.json",
            "manifest.json",
            "result.npy",
            "000_d0_saliency.png",
            "001_d1_saliency.png",
        }
    )
    data = ImageFolderDataset(five_digits, transform=preprocessing_for("digits"))
    same = {"abs": False, "reduction": "mean"}  # the CLI passes its defaults explicitly
    run_over(
        VanillaSaliencyImage(model, "conv5"),
        data,
        targets=3,
        out=tmp_path / "lib",
        batch_size=2,
        **same,
    )
    streamed = read_results(out)
    np.testing.assert_array_equal(streamed, read_results(tmp_path / "lib"))
    expected = VanillaSaliencyImage(model, "conv5").attribute(loaded(five_digits), target=3)
    np.testing.assert_allclose(streamed, expected.numpy(), rtol=1e-5, atol=1e-7)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["request"]
        == json.loads((tmp_path / "lib" / "manifest.json").read_text())["request"]
    )
    assert manifest["request"]["stimulus_ids"] == [
        "d0.png",
        "d1.png",
        "d2.png",
        "d3.png",
        "sub/d4.png",
    ]
    # the folder is a plain runner folder: the same call from Python finds it complete
    again = run_over(
        VanillaSaliencyImage(model, "conv5"), data, targets=3, out=out, batch_size=2, **same
    )
    assert (again.computed, again.reused) == (0, 5)


def test_stream_smoothgrad_on_predicted_classes_equals_in_memory(
    tmp_path: Path, five_digits: Path
) -> None:
    from dnnbrain_captum import read_results

    args = [
        "saliency",
        five_digits,
        "--method",
        "guided",
        "--smooth",
        2,
        "--batch-size",
        2,
        "--no-figures",
    ]
    assert run([*args, "--out", tmp_path / "s"]) == 0
    assert run([*args, "--no-stream", "--out", tmp_path / "m"]) == 0
    in_memory = json.loads((tmp_path / "m" / "results.json").read_text())
    assert read_results(tmp_path / "s" / "predicted_classes").tolist() == in_memory["targets"]
    np.testing.assert_allclose(
        read_results(tmp_path / "s"), np.load(tmp_path / "m" / "result.npy"), rtol=1e-5, atol=1e-7
    )
    assert "predicted_classes" in files_in(tmp_path / "s")


def test_stream_occlusion_and_upsample_with_digits(
    tmp_path: Path, five_digits: Path, model
) -> None:
    from dnnbrain_captum import read_results

    args = [
        "occlusion",
        five_digits,
        "--layer",
        "conv4",
        "--channel",
        7,
        "--window",
        6,
        4,
        "--stride",
        3,
        "--baseline",
        0.5,
        "--max-figures",
        2,
        "--out",
        tmp_path / "o",
    ]
    assert run(args) == 0
    expected = OccluderDiscrepancyMapping(model, "conv4").attribute(
        loaded(five_digits), target=7, sliding_window_shapes=(6, 4), strides=(3, 3), baselines=0.5
    )
    np.testing.assert_allclose(read_results(tmp_path / "o"), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert sorted(f for f in files_in(tmp_path / "o") if f.endswith(".png")) == [
        "000_d0_occlusion.png",
        "001_d1_occlusion.png",
    ]
    # explicit --stream with files and --digits equals the in-memory run
    files = [str(p) for p in find_images(five_digits)[:2]]
    args = [
        "upsample",
        *files,
        "--digits",
        2,
        "--layer",
        "conv5",
        "--channel",
        5,
        "--threshold",
        0.5,
        "--no-figures",
    ]
    assert run([*args, "--stream", "--batch-size", 3, "--out", tmp_path / "u"]) == 0
    assert run([*args, "--out", tmp_path / "v"]) == 0
    np.testing.assert_allclose(
        read_results(tmp_path / "u"),  # batches of 3 vs one of 4
        np.load(tmp_path / "v" / "result.npy"),
        rtol=1e-5,
        atol=1e-5,
    )


def test_stream_rerun_resumes_refuses_or_overwrites(
    tmp_path: Path, five_digits: Path, capsys, monkeypatch
) -> None:
    from dnnbrain_captum import read_results

    out = tmp_path / "up"
    args = [
        "upsample",
        five_digits,
        "--layer",
        "conv3",
        "--channel",
        1,
        "--batch-size",
        2,
        "--max-figures",
        1,
        "--out",
        out,
    ]
    original = UpsamplingActivationMapping.attribute
    calls: list[int] = []

    def killed_in_the_second_chunk(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(UpsamplingActivationMapping, "attribute", killed_in_the_second_chunk)
    assert run(args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rerun the same command to resume" in err[0]
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    monkeypatch.undo()
    assert run(args) == 0  # resumes
    assert "3 computed, 2 reused" in capsys.readouterr().err
    reference = tmp_path / "ref"
    assert run([*args[:-1], reference]) == 0
    np.testing.assert_array_equal(read_results(out), read_results(reference))
    assert run(args) == 0  # complete: nothing recomputed, nothing rewritten
    assert "0 computed, 5 reused" in capsys.readouterr().err
    before = snapshot(out)
    for other in (["--channel", 2], ["--interpolate", "nearest"]):
        assert run([*args, *other]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "differs in" in err[0] and "--overwrite" in err[0], err
        assert snapshot(out) == before
    # a rerun that would first need predicted classes is refused with the folder unchanged
    assert run(["saliency", five_digits, "--out", out]) == 2
    capsys.readouterr()
    assert snapshot(out) == before and not (out / "predicted_classes").exists()
    assert run([*args, "--channel", 2, "--overwrite"]) == 0
    assert "5 computed, 0 reused" in capsys.readouterr().err
    expected = UpsamplingActivationMapping(digits_cnn(), "conv3").attribute(
        loaded(five_digits), target=2
    )
    np.testing.assert_allclose(read_results(out), expected.numpy(), rtol=1e-5, atol=1e-5)
    # a folder holding other files (not a run) is refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert run([*args[:-1], other]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert files_in(other) == {"notes.txt"}


def test_stream_unreadable_image_is_named_and_can_be_skipped(
    tmp_path: Path, five_digits: Path, model, capsys
) -> None:
    import shutil

    from dnnbrain_captum import read_results

    folder = tmp_path / "imgs"
    shutil.copytree(five_digits, folder)
    (folder / "d2b.png").write_text("not a png")  # item 3 in path order
    out = tmp_path / "out"
    args = [
        "upsample",
        folder,
        "--layer",
        "conv5",
        "--channel",
        4,
        "--batch-size",
        2,
        "--no-figures",
        "--out",
        out,
    ]
    assert run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "d2b.png" in err[0] and "--skip-unreadable" in err[0], err
    assert "Traceback" not in err[0]
    assert run([*args, "--skip-unreadable"]) == 0  # resumes, skipping the bad file
    err = capsys.readouterr().err
    assert "note: skipped unreadable image" in err and "d2b.png" in err
    result = read_results(out)
    assert result.shape == (6, 32, 32) and np.isnan(result[3]).all()
    expected = UpsamplingActivationMapping(model, "conv5").attribute(loaded(five_digits), target=4)
    np.testing.assert_allclose(np.delete(result, 3, axis=0), expected.numpy(), rtol=1e-5, atol=1e-5)
    record = json.loads((out / "results.json").read_text())
    assert [s["id"] for s in record["run"]["skipped"]] == ["d2b.png"]
    # --skip-unreadable is refused for in-memory runs
    assert run([*args[:-1], tmp_path / "x", "--skip-unreadable", "--no-stream"]) == 2
    assert "--skip-unreadable" in capsys.readouterr().err


# ----------------------------------------------------------------------------- unreadable inputs


UNREADABLE = {
    "bad header": bad_images.bad_header,
    "decompression bomb": bad_images.bomb,
    "truncated": bad_images.truncated,
}
# every subcommand that reads images, with the options it needs besides the image
IMAGE_COMMANDS = {
    "saliency": [],
    "occlusion": ["--window", "8", "--stride", "8"],
    "upsample": ["--layer", "conv3", "--channel", "0"],
    "mask": [],
    "minimal": [],
    "rf": ["--layer", "conv3"],
    "empirical-rf": ["--layer", "conv3", "--channel", "0"],
    "synthesize": ["--layer", "conv3", "--channel", "0", "--n-iter", "2"],
}


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
@pytest.mark.parametrize("command", sorted(IMAGE_COMMANDS))
def test_unreadable_image_is_one_line_exit_2_and_nothing_written(
    command: str, kind: str, tmp_path: Path, capsys
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    good = work / "good.png"
    Image.new("RGB", (32, 32), "white").save(good)
    bad = work / "bad.png"
    UNREADABLE[kind](bad)
    before = {p: p.read_bytes() for p in work.iterdir()}
    out = work / "out"
    code = run([command, good, bad, *IMAGE_COMMANDS[command], "--out", out])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, captured.err
    assert f"{PROG_NAME} {command}: error:" in lines[0] and "bad.png" in lines[0]
    assert "Traceback" not in captured.err
    assert {p: p.read_bytes() for p in work.iterdir()} == before  # nothing written


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_unreadable_weights_file_is_one_line_exit_2(kind: str, tmp_path: Path, capsys) -> None:
    weights = tmp_path / "weights.pt"
    if kind == "truncated":
        torch.save(digits_cnn().state_dict(), weights)
        weights.write_bytes(weights.read_bytes()[:5000])
    else:
        weights.write_bytes(b"\x89PNG not a checkpoint")
    out = tmp_path / "out"
    assert run(["saliency", "--digits", 1, "--weights", weights, "--out", out]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "weights.pt" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_streamed_unreadable_image_is_one_line_exit_2(kind: str, tmp_path: Path, capsys) -> None:
    """Streamed runs (a folder) refuse an unreadable image with one line naming it, before
    anything is written (see docs/cli.md)."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (32, 32), "white").save(folder / "a_good.png")
    UNREADABLE[kind](folder / "b_bad.png")
    assert run(["saliency", folder, "--out", tmp_path / "out", "--quiet"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "b_bad.png" in lines[0] and "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- repeatable runs


RANDOM_MODEL = ["--model", "resnet18", "--layer", "layer1", "--channel", "3", "--image-size", "32"]


def test_random_weights_are_seeded_said_and_recorded(tmp_path: Path, capsys) -> None:
    results = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / name
        assert run(["upsample", "--digits", 2, *RANDOM_MODEL, "--seed", seed, "--out", out]) == 0
        err = capsys.readouterr().err
        assert f"resnet18 has random weights (seeded with --seed {seed})" in err
        record = json.loads((out / "results.json").read_text())
        assert record["random_weights_seed"] == seed
        results.append(np.load(out / "result.npy"))
    np.testing.assert_array_equal(results[0], results[1])  # the same command, the same numbers
    assert not np.array_equal(results[0], results[2])  # another seed, other weights
    before = torch.random.get_rng_state()
    cli.load_model("resnet18", seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG untouched


def test_streamed_rerun_of_a_random_model_resumes(
    tmp_path: Path, five_digits: Path, capsys
) -> None:
    out = tmp_path / "stream"
    args = ["saliency", five_digits, *RANDOM_MODEL, "--out", out, "--no-figures"]
    assert run(args) == 0
    first = np.load(out / "result.npy")
    capsys.readouterr()
    assert run(args) == 0  # was refused: "differs in model_sha256"
    assert "0 computed, 5 reused" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(out / "result.npy"), first)


def test_checkpoints_module_prefix_pickled_model_and_factory_from_cwd(
    tmp_path: Path, model, capsys, monkeypatch
) -> None:
    ddp = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, ddp)
    out = tmp_path / "ddp"
    assert (
        run(
            [
                "upsample",
                "--digits",
                1,
                "--layer",
                "conv3",
                "--channel",
                1,
                "--weights",
                ddp,
                "--out",
                out,
            ]
        )
        == 0
    )
    expected = UpsamplingActivationMapping(model, "conv3").attribute(
        digits_images(n=1)[0], target=1
    )
    np.testing.assert_allclose(np.load(out / "result.npy"), expected.numpy(), atol=1e-6)
    whole = tmp_path / "whole.pt"
    torch.save(model, whole)
    capsys.readouterr()
    assert run(["saliency", "--digits", 1, "--weights", whole, "--out", tmp_path / "w"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 300, lines
    assert "whole pickled model" in lines[0] and "state_dict()" in lines[0]
    # package.module:factory from the current folder, without PYTHONPATH
    (tmp_path / "mymodels.py").write_text(
        "from dnnbrain_captum.models import digits_cnn\n\ndef make():\n    return digits_cnn()\n"
    )
    monkeypatch.chdir(tmp_path)
    assert str(tmp_path) not in sys.path
    assert (
        run(
            [
                "upsample",
                "--digits",
                1,
                "--model",
                "mymodels:make",
                "--layer",
                "conv3",
                "--channel",
                1,
                "--out",
                tmp_path / "factory",
            ]
        )
        == 0
    )
    assert str(tmp_path) not in sys.path  # put back
    np.testing.assert_allclose(
        np.load(tmp_path / "factory" / "result.npy"), expected.numpy(), atol=1e-6
    )


@pytest.mark.parametrize("kind, magic", [("svg", b"<?xml"), ("pdf", b"%PDF-")])
def test_figure_format_and_dpi(kind: str, magic: bytes, tmp_path: Path) -> None:
    out = tmp_path / "res"
    assert (
        run(
            [
                "upsample",
                "--digits",
                2,
                "--layer",
                "conv3",
                "--channel",
                1,
                "--format",
                kind,
                "--out",
                out,
            ]
        )
        == 0
    )
    figures = sorted(p for p in out.iterdir() if p.suffix == f".{kind}")
    assert len(figures) == 2 and all(p.read_bytes()[:5] == magic for p in figures)
    assert set(json.loads((out / "results.json").read_text())["files"]) == files_in(out)
    small, large = tmp_path / "small", tmp_path / "large"
    for folder, dpi in ((small, 50), (large, 100)):
        assert (
            run(
                [
                    "upsample",
                    "--digits",
                    1,
                    "--layer",
                    "conv3",
                    "--channel",
                    1,
                    "--dpi",
                    dpi,
                    "--out",
                    folder,
                ]
            )
            == 0
        )
    (png_small,), (png_large,) = small.glob("*.png"), large.glob("*.png")
    with Image.open(png_small) as a, Image.open(png_large) as b:
        assert b.width == 2 * a.width


def test_photos_are_cropped_not_squashed(tmp_path: Path) -> None:
    """A 64 x 32 photo for the 32 x 32 digits model: shorter side 32, centre 32 x 32 kept."""
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out = tmp_path / "res"
    assert (
        run(["upsample", tmp_path / "wide.png", "--layer", "conv3", "--channel", 1, "--out", out])
        == 0
    )
    centre = torch.from_numpy(wide[:, 16:48]).permute(2, 0, 1).float().div(255).unsqueeze(0)
    expected = UpsamplingActivationMapping(digits_cnn(), "conv3").attribute(centre, target=1)
    np.testing.assert_allclose(np.load(out / "result.npy"), expected.numpy(), atol=1e-5)
    record = json.loads((out / "results.json").read_text())
    assert record["preprocessing"]["center_crop"] == 32


def test_upsample_help_says_layer_and_channel_are_required(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["upsample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0-BASED channel of --layer, required" in text
    assert "the class index" not in text  # upsample has no class mode


def test_help_answers_without_importing_torch() -> None:
    """--help (main and every subcommand) imports neither torch nor numpy nor matplotlib;
    benchmarks/bench_cli_help.py measures the time."""
    code = (
        "import sys\n"
        "import dnnbrain_captum.cli as cli\n"
        "for argv in [['--help'], *([name, '--help'] for name in cli.SUBCOMMANDS)]:\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "usage: dnnbrain-captum saliency" in done.stdout
