"""Every tutorial runs top to bottom, offline, with a non-interactive backend and small settings."""

from __future__ import annotations

import runpy
from pathlib import Path

import matplotlib
import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


def test_there_is_a_tutorial_per_algorithm_family() -> None:
    names = {path.stem for path in TUTORIALS}
    assert {"01_saliency", "02_activation_maps", "03_receptive_fields", "04_synthesis"} <= names


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

