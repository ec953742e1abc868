"""The unit atlas: its numbers against brute force, its pages and links, its folder rules."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag

import numpy as np
import pytest
import torch

from dnnbrain_captum import digits_cnn, digits_images
from dnnbrain_captum.atlas import ChannelActivations, build_atlas, rank_stimuli, read_atlas

N_IMAGES, TOP_K = 16, 2
CHEAP = {
    "n_syntheses": 1,
    "synthesis": {"n_iter": 1},
    "occlusion": {"sliding_window_shapes": (16, 16), "strides": (16, 16)},
}


@pytest.fixture(scope="module")
def atlas_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conv5, every channel; conv3, a few: the atlas the tests below read."""
    out = tmp_path_factory.mktemp("atlas") / "site"
    images, _ = digits_images(n=N_IMAGES)
    build_atlas(
        digits_cnn(),
        ["conv5", "conv3"],
        images,
        out,
        top_k=TOP_K,
        channels={"conv3": "1,4-5"},
        batch_size=8,
        **CHEAP,
    )
    return out


def _brute_force(layer_index: int) -> np.ndarray:
    """Every stimulus alone through the whole model; each channel's mean at the layer."""
    model = digits_cnn()
    images, _ = digits_images(n=N_IMAGES)
    seen: list[torch.Tensor] = []
    handle = model.features[layer_index].register_forward_hook(
        lambda module, args, output: seen.append(output.detach().clone())
    )
    try:
        with torch.no_grad():
            for image in images:
                model(image[None])
    finally:
        handle.remove()
    return torch.cat(seen).mean(dim=(2, 3)).numpy().astype(np.float64)


@pytest.mark.parametrize(("name", "index"), [("conv5", 10), ("conv3", 6)])
def test_top_and_bottom_k_equal_brute_force(atlas_dir: Path, name: str, index: int) -> None:
    truth = _brute_force(index)
    layer = next(entry for entry in read_atlas(atlas_dir)["layers"] if entry["layer"] == name)
    expected_channels = list(range(64)) if name == "conv5" else [1, 4, 5]
    assert [c["channel"] for c in layer["channels"]] == expected_channels
    for record in layer["channels"]:
        column = truth[:, record["channel"]]
        order = sorted(range(N_IMAGES), key=lambda i: (-column[i], i))
        assert record["top_ids"] == [str(i) for i in order[:TOP_K]]
        lowest = sorted(range(N_IMAGES), key=lambda i: (column[i], i))
        assert record["bottom_ids"] == [str(i) for i in lowest[:TOP_K]]
        np.testing.assert_allclose(
            record["top_activations"], column[order[:TOP_K]], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            record["bottom_activations"], column[lowest[:TOP_K]], rtol=1e-5, atol=1e-6
        )
        assert record["page"] == f"{name}/{record['channel']}.html"
        assert record["rf_size"] == ([34, 34] if name == "conv5" else [18, 18])
        assert len(record["empirical_rf_size"]) == 2
        assert all(0 < v <= record["rf_size"][0] for v in record["empirical_rf_size"])
        assert len(record["synthesis_activation"]) == 1


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("href", "src") and value is not None:
                self.targets.append(value)


def _links(page: Path) -> list[str]:
    parser = _Links()
    parser.feed(page.read_text("utf-8"))
    return parser.targets


def test_every_page_and_link_exists(atlas_dir: Path) -> None:
    atlas = read_atlas(atlas_dir)
    pages = sorted(atlas_dir.rglob("*.html"))
    expected = {"index.html"} | {c["page"] for layer in atlas["layers"] for c in layer["channels"]}
    assert {p.relative_to(atlas_dir).as_posix() for p in pages} == expected
    for page in pages:
        text = page.read_text("utf-8")
        assert "<script" not in text and "http://" not in text and "https://" not in text
        for target in _links(page):
            path, fragment = urldefrag(target)
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.is_file(), f"{page.name}: broken link {target}"
            assert atlas_dir.resolve() in resolved.parents
            if fragment:
                assert f'id="{fragment}"' in resolved.read_text("utf-8")
    index_links = set(_links(atlas_dir / "index.html"))
    assert {c["page"] for layer in atlas["layers"] for c in layer["channels"]} <= index_links
    third = _links(atlas_dir / "conv5" / "2.html")
    assert {"../index.html", "1.html", "3.html"} <= set(third)
    fourth = set(_links(atlas_dir / "conv3" / "4.html"))  # neighbours among the selected: 1, 5
    assert {"1.html", "5.html", "../index.html"} <= fourth and "3.html" not in fourth
    assert not {p for p in _links(atlas_dir / "conv3" / "5.html") if p.endswith(".html")} - {
        "../index.html",
        "4.html",
    }


def test_channel_activations_pass_stops_at_the_deepest_layer() -> None:
    model = digits_cnn()
    images, _ = digits_images(n=5)
    ran: list[str] = []
    handles = [
        module.register_forward_hook(lambda m, a, o, n=name: ran.append(n))
        for name, module in model.named_modules()
        if name
    ]
    try:
        # given deepest first: the pass still captures both and stops after features.10
        values = ChannelActivations(model, [model.features[10], model.features[3]]).attribute(
            images
        )
    finally:
        for handle in handles:
            handle.remove()
    assert values.shape == (5, 64 + 32)
    assert "features.11" not in ran and "classifier" not in ran
    assert not model.features[10]._forward_hooks
    with torch.no_grad():
        truth = model.features[:4](images).mean(dim=(2, 3))
    torch.testing.assert_close(values[:, 64:], truth)


def test_rank_stimuli_equals_stable_argsort_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    for n, m, k in [(50, 7, 1), (50, 7, 9), (12, 3, 12), (200, 5, 30)]:
        values = rng.integers(0, 4, size=(n, m)).astype(np.float32)  # ties everywhere
        values[:, 0] = 0.0  # a constant column (a dead ReLU channel)
        values[3, 1] = -0.0
        top, bottom = rank_stimuli(values, k)
        np.testing.assert_array_equal(top, np.argsort(-values, axis=0, kind="stable")[:k].T)
        np.testing.assert_array_equal(bottom, np.argsort(values, axis=0, kind="stable")[:k].T)
        assert top.dtype == bottom.dtype == np.int64


def test_rank_stimuli_refuses_bad_k_and_nan() -> None:
    values = np.array([[1.0, 2.0], [0.5, 3.0]])
    with pytest.raises(ValueError, match="top_k must be between 1 and the number of stimuli"):
        rank_stimuli(values, 3)
    with pytest.raises(ValueError, match="NaN"):
        rank_stimuli(np.array([[np.nan], [1.0]]), 1)


def test_folder_rules(tmp_path: Path) -> None:
    """A folder with the user's files is refused; a different atlas needs overwrite, which
    removes only the atlas's own files."""
    images, _ = digits_images(n=6)
    model = digits_cnn()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds files that are not an atlas"):
        build_atlas(model, "conv5", images, busy, channels="0", top_k=2, **CHEAP)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]

    out = tmp_path / "atlas"
    build_atlas(model, "conv5", images, out, channels="0", top_k=2, **CHEAP)
    (out / "conv5" / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"different settings \(layers\)"):
        build_atlas(model, "conv5", images, out, channels="1", top_k=2, **CHEAP)
    assert (out / "conv5" / "0.html").is_file()
    build_atlas(model, "conv5", images, out, channels="1", top_k=2, overwrite=True, **CHEAP)
    assert (out / "conv5" / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in (out / "conv5").glob("*.html")) == ["1.html"]
    assert [c["channel"] for c in read_atlas(out)["layers"][0]["channels"]] == [1]
    listed = (out / "atlas-files.txt").read_text().split()
    assert "conv5/mine.txt" not in listed and "conv5/1.html" in listed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": ["conv5", "features.10"]}, "the same layer twice"),
        ({"layers": ["fc1"]}, r"\(N, C, H, W\)"),
        ({"channels": "64"}, "channel 64 is out of range for layer 'conv5'"),
        ({"top_k": 7}, "top_k=7 exceeds the 6 stimuli"),
    ],
)
def test_bad_requests_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    images, _ = digits_images(n=6)
    call = {"layers": ["conv5"], "channels": "0", "top_k": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_atlas(digits_cnn(), call.pop("layers"), images, tmp_path / "out", **call, **CHEAP)
    assert not (tmp_path / "out").exists()


def test_atlas_json_is_plain_json(atlas_dir: Path) -> None:
    text = (atlas_dir / "atlas.json").read_text("utf-8")
    data = json.loads(text)
    assert data["top_k"] == TOP_K and data["n_stimuli"] == N_IMAGES
    assert [layer["layer"] for layer in data["layers"]] == ["conv5", "conv3"]


def test_site_in_a_headless_browser(atlas_dir: Path, tmp_path: Path) -> None:
    """The index and a page of every kind (first, middle and last of a layer) opened in
    Chromium from the file system, one browser for all: every image decodes, no broken link, no
    console error, no web link. (All pages come from one template; every page's links and
    images are checked on disk by test_every_page_and_link_exists.)"""
    import tempfile

    from tests.helpers.browser import BrowserError, _inspect, _Pipe, find_chromium

    executable = find_chromium()
    if executable is None:
        raise BrowserError("no Chromium on PATH: install the 'chromium' package (.ci/run does)")
    names = ["index.html", "conv3/1.html", "conv3/4.html", "conv5/0.html", "conv5/63.html"]
    n_images = 0
    with tempfile.TemporaryDirectory(prefix="atlas-chromium-") as profile:
        pipe = _Pipe(executable, profile, 60.0)
        try:
            for k, name in enumerate(names):
                page = (atlas_dir / name).resolve()
                report = _inspect(pipe, page, tmp_path / f"page{k}.png", 1200)
                assert report.url == page.as_uri(), name
                assert report.console_errors == [], name
                assert report.broken_links == [], name
                assert report.external_links == [], name
                assert report.images and all(image.decoded for image in report.images), name
                n_images += len(report.images)
        finally:
            pipe.close()
    assert n_images > 67 * 2 + 3 * 10 + 10


def test_best_unit_and_field_coverage_match_the_public_classes(
    atlas_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """best_unit = argmax of the channel's map on the top stimulus (brute force); the drawn box is
    TheoreticalReceptiveField.find_region's; the empirical-field picture greys exactly the
    pixels EmpiricalReceptiveField leaves uncovered (seen by shifting every map by +1000)."""
    from types import SimpleNamespace

    from dnnbrain_captum import (
        EmpiricalReceptiveField,
        TheoreticalReceptiveField,
        UpsamplingActivationMapping,
    )
    from dnnbrain_captum.atlas._site import _best_units

    model = digits_cnn()
    images, _ = digits_images(n=N_IMAGES)
    layer = read_atlas(atlas_dir)["layers"][0]
    theory = TheoreticalReceptiveField(model, (3, 32, 32))
    with torch.no_grad():
        maps = model.features[:11](images)
    for record in layer["channels"][:8]:
        top = record["top_indices"][0]
        flat = int(maps[top, record["channel"]].argmax())
        assert record["best_unit"] == [flat // 8, flat % 8]
        region = theory.find_region("conv5", tuple(record["best_unit"]))
        assert record["best_unit_region"] == [list(b) for b in region]

    field = EmpiricalReceptiveField(UpsamplingActivationMapping(model, "conv5"))
    entry = field.theoretical((3, 32, 32))
    top = images[: TOP_K + 3]
    plan = SimpleNamespace(channels=[5], module=model.features[10], transform=None)
    _, covered = _best_units(model, plan, top, entry, len(top))
    original = UpsamplingActivationMapping.attribute
    monkeypatch.setattr(
        UpsamplingActivationMapping,
        "attribute",
        lambda self, *a, **k: original(self, *a, **k) + 1000.0,
    )
    shifted = field.attribute(top, target=5, interpolate_mode="bilinear")
    assert np.array_equal(covered[0], (shifted.map > 500).numpy())
    assert 0 < covered[0].sum() < covered[0].size


def test_diverse_syntheses_are_made_one_channel_per_batch(tmp_path: Path) -> None:
    """With the diversity objective, a channel's syntheses equal SynthesisImage on that
    channel's starts alone (the objective couples only them)."""
    from dnnbrain_captum import SynthesisImage, random_images, read_results

    images, _ = digits_images(n=6)
    model = digits_cnn()
    options = {"n_iter": 3, "diversity": 4.0}
    build_atlas(
        model,
        "conv5",
        images,
        tmp_path / "a",
        channels="2,5",
        top_k=2,
        n_syntheses=3,
        synthesis=options,
        occlusion={**CHEAP["occlusion"], "method": "full"},  # the class, once per channel
    )
    made = np.asarray(read_results(tmp_path / "a" / "runs" / "conv5" / "syntheses"))
    starts = random_images(6, (32, 32), 3, seed=0)
    alone = SynthesisImage(model, "conv5").attribute(starts[3:], target=5, **options)
    np.testing.assert_allclose(made[3:], alone.numpy(), rtol=0, atol=1e-6)
    together = SynthesisImage(model, "conv5").attribute(
        starts, target=[2, 2, 2, 5, 5, 5], **options
    )
    assert not np.allclose(made[3:], together[3:].numpy(), atol=1e-4)


def test_shared_occlusion_sweep_equals_the_class_per_channel(atlas_dir: Path) -> None:
    """The atlas's occlusion maps (one sweep per distinct top stimulus, every channel) equal
    OccluderDiscrepancyMapping's full recompute, one channel and stimulus at a time; an odd
    window (6 x 5, strides 5 x 3) and a non-zero occluder in a direct call too."""
    from dnnbrain_captum import OccluderDiscrepancyMapping, read_results
    from dnnbrain_captum.atlas._occlusion import ChannelOcclusion, top_grids

    model = digits_cnn()
    images, _ = digits_images(n=N_IMAGES)
    layer = next(entry for entry in read_atlas(atlas_dir)["layers"] if entry["layer"] == "conv3")
    top = np.array([record["top_indices"] for record in layer["channels"]])
    sweep = np.asarray(read_results(atlas_dir / "runs" / "conv3" / "occlusion"))
    assert sweep.shape == (len(np.unique(top)), 3, 2, 2)  # distinct stimuli x channels
    grids = top_grids(sweep, top, np.unique(top))
    odm = OccluderDiscrepancyMapping(model, "conv3")
    for j, record in enumerate(layer["channels"]):
        expected = odm.attribute(
            images[top[j]],
            target=record["channel"],
            sliding_window_shapes=(16, 16),
            strides=(16, 16),
            method="full",
        )
        np.testing.assert_allclose(grids[j * TOP_K : (j + 1) * TOP_K], expected, atol=1e-5)

    evaluator = ChannelActivations(model, [model.features[10]])
    evaluator.probe(images[:1])
    options = {"sliding_window_shapes": (6, 5), "strides": (5, 3), "baselines": 0.5}
    maps = ChannelOcclusion(evaluator, [7, 2]).attribute(
        images[:3], perturbations_per_eval=7, **options
    )
    assert maps.shape == (3, 2, 6, 10)
    odm5 = OccluderDiscrepancyMapping(model, "conv5")
    for q, channel in enumerate([7, 2]):
        expected = odm5.attribute(images[:3], target=channel, method="full", **options)
        torch.testing.assert_close(maps[:, q], expected, atol=1e-5, rtol=1e-5)


def test_an_int_occlusion_window_is_square(tmp_path: Path) -> None:
    """``sliding_window_shapes=16`` (an int, as the class accepts) gives 16 x 16 windows and the
    default strides of half a window (it used to fail with a TypeError)."""
    images, _ = digits_images(n=6)
    options = {**CHEAP, "occlusion": {"sliding_window_shapes": 16}}
    build_atlas(digits_cnn(), "conv5", images, tmp_path / "a", channels="0", top_k=2, **options)
    atlas = read_atlas(tmp_path / "a")
    assert atlas["occlusion"]["strides"] == [8, 8]
    from dnnbrain_captum import read_results

    grids = np.asarray(read_results(tmp_path / "a" / "runs" / "conv5" / "occlusion"))
    assert grids.shape[1:] == (1, 3, 3)  # (distinct top stimuli, channels, 3 x 3 windows)
