"""Figure helpers: return Figures, no pyplot state, all-zero maps drawn, geometry lines up."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from dnnbrain_captum import visualization as vis

ZERO_CASES = {
    "saliency": lambda: vis.saliency_figure(torch.zeros(3, 8, 8), torch.rand(3, 8, 8)),
    "saliency positive of negative map": lambda: vis.saliency_figure(
        -torch.ones(3, 8, 8), torch.rand(3, 8, 8), sign="positive"
    ),
    "saliency without image": lambda: vis.saliency_figure(np.zeros((8, 8)), sign="all"),
    "saliency masked": lambda: vis.saliency_figure(
        np.zeros((8, 8)), torch.rand(3, 8, 8), method="masked_image"
    ),
    "activation map": lambda: vis.activation_map_figure(torch.zeros(8, 8), torch.rand(3, 8, 8)),
    "occlusion": lambda: vis.occlusion_figure(np.zeros((3, 3)), np.zeros((3, 8, 8)), 4, 2),
    "receptive field": lambda: vis.receptive_field_figure(np.zeros((8, 8)), [((0, 3), (0, 3))]),
    "synthesis grid": lambda: vis.synthesis_grid(torch.zeros(3, 3, 8, 8)),
    "minimal image": lambda: vis.minimal_image_figure(
        torch.zeros(3, 8, 8), torch.zeros(3, 8, 8), torch.zeros(8, 8)
    ),
    "empirical rf": lambda: vis.empirical_rf_figure(np.zeros((9, 9)), size=(0.0, 0.0)),
}


@pytest.mark.parametrize("case", sorted(ZERO_CASES))
def test_all_zero_inputs_give_figures_without_pyplot(case: str, tmp_path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = ZERO_CASES[case]()
    assert isinstance(fig, Figure)
    assert plt.get_fignums() == before  # nothing registered with pyplot
    vis.save_figure(fig, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_backend_is_untouched() -> None:
    backend = matplotlib.get_backend()
    vis.saliency_figure(torch.rand(3, 4, 4))
    assert matplotlib.get_backend() == backend


def test_normalize_attribution_literal_values() -> None:
    values = np.array([[1.0, 2.0], [3.0, 4.0]])
    # sorted |a| = 1, 2, 3, 4 (sum 10); 70 % of the mass is reached at 4 → divide by 4
    np.testing.assert_allclose(vis.normalize_attribution(values, outlier_perc=30), values / 4)
    # 50 %: the cumulative sums 1, 3, 6 reach 5 at the value 3 → divide by 3, clip
    np.testing.assert_allclose(
        vis.normalize_attribution(values, outlier_perc=50), np.minimum(values / 3, 1.0)
    )
    signed = np.array([[-2.0, 1.0]])
    np.testing.assert_allclose(
        vis.normalize_attribution(signed, "all", outlier_perc=0), [[-1.0, 0.5]]
    )
    np.testing.assert_allclose(
        vis.normalize_attribution(signed, "negative", outlier_perc=0), [[1.0, 0.0]]
    )
    np.testing.assert_allclose(
        vis.normalize_attribution(signed, "positive", outlier_perc=0), [[0.0, 1.0]]
    )
    # channels are summed
    three = np.stack([np.ones((2, 2)), np.ones((2, 2)), np.zeros((2, 2))])
    np.testing.assert_allclose(vis.normalize_attribution(three), np.ones((2, 2)))


def test_normalize_attribution_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sign"):
        vis.normalize_attribution(np.ones((2, 2)), sign="both")
    with pytest.raises(ValueError, match="outlier_perc"):
        vis.normalize_attribution(np.ones((2, 2)), outlier_perc=100)
    with pytest.raises(ValueError, match="NaN"):
        vis.normalize_attribution(np.array([[np.nan]]))


def test_to_display_image_layouts_and_ranges() -> None:
    rgb = np.random.default_rng(0).random((4, 5, 3))
    np.testing.assert_array_equal(vis.to_display_image(rgb), rgb)
    np.testing.assert_allclose(vis.to_display_image(torch.tensor(rgb).permute(2, 0, 1)), rgb)
    as_uint8 = (rgb * 255).astype(np.uint8)
    np.testing.assert_allclose(vis.to_display_image(as_uint8), as_uint8 / 255.0)
    normalised = vis.to_display_image(torch.tensor([[[-2.0, 0.0], [1.0, 2.0]]]))
    np.testing.assert_allclose(normalised[..., 0], [[0.0, 0.5], [0.75, 1.0]])
    assert normalised.shape == (2, 2, 3)
    with pytest.raises(ValueError, match="shape"):
        vis.to_display_image(np.zeros((2, 2, 2, 2)))


def test_occlusion_cells_are_centred_on_their_windows() -> None:
    fig = vis.occlusion_figure(np.arange(49.0).reshape(7, 7), np.zeros((3, 32, 32)), 8, 4)
    overlay = fig.axes[1].images[-1]
    left, right, bottom, top = overlay.get_extent()
    # 7 cells of width 4; cell 0 is centred on pixel 3.5, the centre of window [0, 8)
    assert (left, right, top, bottom) == (1.5, 29.5, 1.5, 29.5)
    assert left + 4 / 2 == (8 - 1) / 2


def test_receptive_field_box_covers_the_half_open_region() -> None:
    fig = vis.receptive_field_figure(
        np.zeros((32, 32, 3)), [((0, 10), (4, 20)), ((5, 6), (7, 8))], ["a", "b"]
    )
    first, second = fig.axes[0].patches
    assert first.get_xy() == (3.5, -0.5)
    assert (first.get_width(), first.get_height()) == (16.0, 10.0)
    assert second.get_xy() == (6.5, 4.5) and second.get_width() == 1.0


def test_saliency_figure_panels_and_errors() -> None:
    fig = vis.saliency_figure(torch.randn(3, 6, 6), torch.rand(3, 6, 6), title="x")
    assert [ax.get_title() for ax in fig.axes[:2]] == ["image", "x"]
    assert len(vis.saliency_figure(torch.randn(6, 6), show_colorbar=False).axes) == 1
    with pytest.raises(ValueError, match="differ"):
        vis.saliency_figure(torch.randn(3, 6, 6), torch.rand(3, 5, 5))
    with pytest.raises(ValueError, match="method"):
        vis.saliency_figure(torch.randn(3, 6, 6), method="alpha")


def test_synthesis_grid_layout() -> None:
    fig = vis.synthesis_grid(torch.randn(10, 3, 4, 4), [str(k) for k in range(10)])
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 10 and len(fig.axes) == 16  # 2 rows of 8
    assert visible[9].get_title() == "9"
    with pytest.raises(ValueError, match="titles"):
        vis.synthesis_grid(torch.randn(2, 3, 4, 4), ["one"])


def test_empirical_rf_figure_draws_the_size_box() -> None:
    fig = vis.empirical_rf_figure(np.random.default_rng(1).random((11, 11)), size=(4.0, 6.0))
    (box,) = fig.axes[0].patches
    assert box.get_xy() == (2.0, 3.0) and (box.get_width(), box.get_height()) == (6.0, 4.0)


@pytest.mark.parametrize("case", sorted(ZERO_CASES))
def test_every_figure_renders_for_ipython_rich_display(case: str) -> None:
    """IPython's own formatter (what a notebook calls on a cell's last value) gives a PNG
    without any %matplotlib set-up."""
    from IPython.core.formatters import DisplayFormatter

    fig = ZERO_CASES[case]()
    assert isinstance(fig, vis.DisplayFigure)
    data, _ = DisplayFormatter().format(fig)
    assert data["image/png"][:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind, magic", [("png", b"\x89PNG"), ("svg", b"<?xm"), ("pdf", b"%PDF")])
def test_save_figure_formats_and_dpi(kind: str, magic: bytes, tmp_path) -> None:
    from PIL import Image

    vis.save_figure(ZERO_CASES["activation map"](), tmp_path / f"f.{kind}", dpi=50)
    assert (tmp_path / f"f.{kind}").read_bytes()[:4] == magic
    assert [p.name for p in tmp_path.iterdir()] == [f"f.{kind}"]  # no temporary file left
    if kind == "png":
        vis.save_figure(ZERO_CASES["activation map"](), tmp_path / "g.png", dpi=100)
        with Image.open(tmp_path / "f.png") as small, Image.open(tmp_path / "g.png") as big:
            assert big.width == 2 * small.width


def test_save_figure_refuses_unknown_formats_and_dpi(tmp_path) -> None:
    with pytest.raises(ValueError, match="extension must be one of .png, .svg, .pdf"):
        vis.save_figure(ZERO_CASES["activation map"](), tmp_path / "f.jpg")
    with pytest.raises(ValueError, match="dpi must be a positive integer, got 0"):
        vis.save_figure(ZERO_CASES["activation map"](), tmp_path / "f.png", dpi=0)
    assert list(tmp_path.iterdir()) == []


def test_show_outside_a_notebook_saves_a_png(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DNNBRAIN_CAPTUM_FIGURES", str(tmp_path / "figs"))
    path = vis.show(ZERO_CASES["synthesis grid"](), "grid")
    assert path == tmp_path / "figs" / "grid.png"
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="plain file name"):
        vis.show(ZERO_CASES["synthesis grid"](), "../escape")
