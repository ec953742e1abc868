"""Every tutorial runs top to bottom, offline, with a non-interactive backend and small settings."""

from __future__ import annotations

import runpy
from pathlib import Path

import matplotlib
import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


def test_there_is_a_tutorial_per_algorithm_family() -> None:
    names = {path.stem for path in TUTORIALS}
    assert {
        "01_saliency",
        "02_activation_maps",
        "03_receptive_fields",
        "04_synthesis",
        "05_masked_and_minimal_images",
    } <= names


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path: Path, monkeypatch, tmp_path, capsys) -> None:
    text = path.read_text()
    assert text.startswith("# ---\n# jupyter:") and "format_name: percent" in text
    assert text.count("# %%") >= 4
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("DNNBRAIN_CAPTUM_FAST", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights: cell skipped
    monkeypatch.chdir(tmp_path)
    backend = matplotlib.get_backend()
    runpy.run_path(str(path), run_name="__main__")
    assert matplotlib.get_backend() == backend
    out = capsys.readouterr().out
    if "torch.hub" in text:
        assert "skipped:" in out
    assert list(tmp_path.iterdir()) in ([], [tmp_path / "torch"])  # tutorials write nothing



# Every class and method of DNNBrain's `dnnbrain.dnn.algo` (its API documentation).
SEED_API = {
    "Algorithm": ["get_layer", "set_layer"],
    "EmpiricalReceptiveField": ["compute", "generate_rf", "set_params"],
    "GuidedSaliencyImage": ["register_hooks"],
    "MaskedImage": ["prepare_test", "put_mask", "register_hooks", "set_parameters"],
    "MinimalComponentImage": ["combine_component", "generate_minimal_image", "ica_decompose",
                              "pca_decompose", "set_params", "sort_componet"],
    "MinimalParcelImage": ["combine_parcel", "felzenszwalb_decompose", "generate_minimal_image",
                           "quickshift_decompose", "set_params", "slic_decompose", "sort_parcel"],
    "OccluderDiscrepancyMapping": ["compute", "set_params"],
    "SaliencyImage": ["backprop", "backprop_smooth", "register_hooks"],
    "SynthesisImage": ["register_hooks", "set_loss", "set_precondition", "set_smooth_gradient",
                       "synthesize"],
    "TheoreticalReceptiveField": ["compute", "compute_size", "find_region", "set_parameters"],
    "UpsamplingActivationMapping": ["compute", "set_params"],
    "VanillaSaliencyImage": ["register_hooks"],
}


def test_migration_guide_maps_every_seed_class_and_method() -> None:
    guide = (Path(__file__).resolve().parents[1] / "docs" / "migrating_from_dnnbrain.md")
    rows = [line for line in guide.read_text().splitlines() if line.startswith("| ")]
    table = "\n".join(rows)
    for cls, methods in SEED_API.items():
        assert f"`{cls}(" in table, cls
        for method in methods:
            assert f".{method}(" in table, f"{cls}.{method}"
    import dnnbrain_captum

    for cls in SEED_API:
        if cls not in ("Algorithm", "SaliencyImage"):  # abstract bases in DNNBrain
            assert hasattr(dnnbrain_captum, cls), cls
