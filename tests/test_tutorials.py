"""Every tutorial runs top to bottom, offline, with a non-interactive backend and small settings."""

from __future__ import annotations

import base64
import io
import json
import os
import runpy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from PIL import Image

from dnnbrain_captum.visualization._display import FIGURES_ENV

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.py"))


def test_there_is_a_tutorial_per_algorithm_family() -> None:
    names = {path.stem for path in TUTORIALS}
    assert {
        "01_saliency",
        "02_activation_maps",
        "03_receptive_fields",
        "04_synthesis",
        "05_masked_and_minimal_images",
    } <= names


def _figure_calls(text: str) -> int:
    return sum(line.startswith("show(fig, ") for line in text.splitlines())


def _offline(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DNNBRAIN_CAPTUM_FAST", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights: cell skipped
    monkeypatch.delenv("DNNBRAIN_CAPTUM_FIGURES", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_as_a_script_and_saves_its_figures(
    path: Path, monkeypatch, tmp_path, capsys
) -> None:
    text = path.read_text()
    assert text.startswith("# ---\n# jupyter:") and "format_name: percent" in text
    assert text.count("# %%") >= 4
    assert "assert " in text  # each tutorial checks its finding
    monkeypatch.setenv("MPLBACKEND", "Agg")
    _offline(monkeypatch, tmp_path)
    backend = matplotlib.get_backend()
    runpy.run_path(str(path), run_name="__main__")
    assert matplotlib.get_backend() == backend
    out = capsys.readouterr().out
    if "torch.hub" in text:
        assert "skipped:" in out
    figures = sorted((tmp_path / "figures").iterdir())
    assert len(figures) == _figure_calls(text) >= 2
    for figure in figures:
        assert figure.name.startswith(path.stem[:2]) and figure.suffix == ".png"
        with Image.open(figure) as image:
            assert image.format == "PNG" and image.width > 100
    assert {p.name for p in tmp_path.iterdir()} <= {"torch", "figures"}


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """One IPython kernel for every tutorial notebook (each starts with ``%reset -f``, so no
    name survives from one to the next): a kernel and its torch import cost seconds each.
    Started as Jupyter would (no MPLBACKEND: the kernel's inline default), offline."""
    from jupyter_client.manager import KernelManager

    work = tmp_path_factory.mktemp("notebooks")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", FIGURES_ENV)}
    env.update(DNNBRAIN_CAPTUM_FAST="1", TORCH_HOME=str(work / "torch"))
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(work), env=env)
    try:
        yield manager, work
    finally:
        manager.shutdown_kernel(now=True)


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_executes_as_a_notebook_with_inline_figures(path: Path, kernel) -> None:
    """jupytext turns the script into a notebook, nbclient runs it in a real IPython kernel
    (no %matplotlib line): every figure cell shows a PNG, no cell prints a Figure repr."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    manager, work = kernel
    notebook = jupytext.read(path)
    notebook.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))
    client = NotebookClient(notebook, km=manager, timeout=300)
    try:
        client.execute()
    finally:
        if client.kc is not None:
            client.kc.stop_channels()  # the kernel stays up for the next tutorial
    figure_cells = [c for c in notebook.cells if c.cell_type == "code" and "show(fig" in c.source]
    assert len(figure_cells) == _figure_calls(path.read_text())
    for cell in figure_cells:
        pngs = [
            o["data"]["image/png"]
            for o in cell.outputs
            if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
        ]
        assert len(pngs) == cell.source.count("show(fig"), cell.source
        for png in pngs:
            with Image.open(io.BytesIO(base64.b64decode(png))) as image:
                assert image.format == "PNG" and image.width > 100
    texts = " ".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "<Figure size" not in texts
    if "torch.hub" in path.read_text():
        assert "skipped:" in texts
    assert {p.name for p in work.iterdir()} <= {"torch"}  # a notebook saves nothing


# Every class and method of DNNBrain's `dnnbrain.dnn.algo` (its API documentation).
SEED_API = {
    "Algorithm": ["get_layer", "set_layer"],
    "EmpiricalReceptiveField": ["compute", "generate_rf", "set_params"],
    "GuidedSaliencyImage": ["register_hooks"],
    "MaskedImage": ["prepare_test", "put_mask", "register_hooks", "set_parameters"],
    "MinimalComponentImage": [
        "combine_component",
        "generate_minimal_image",
        "ica_decompose",
        "pca_decompose",
        "set_params",
        "sort_componet",
    ],
    "MinimalParcelImage": [
        "combine_parcel",
        "felzenszwalb_decompose",
        "generate_minimal_image",
        "quickshift_decompose",
        "set_params",
        "slic_decompose",
        "sort_parcel",
    ],
    "OccluderDiscrepancyMapping": ["compute", "set_params"],
    "SaliencyImage": ["backprop", "backprop_smooth", "register_hooks"],
    "SynthesisImage": [
        "register_hooks",
        "set_loss",
        "set_precondition",
        "set_smooth_gradient",
        "synthesize",
    ],
    "TheoreticalReceptiveField": ["compute", "compute_size", "find_region", "set_parameters"],
    "UpsamplingActivationMapping": ["compute", "set_params"],
    "VanillaSaliencyImage": ["register_hooks"],
}


def test_migration_guide_maps_every_seed_class_and_method() -> None:
    guide = Path(__file__).resolve().parents[1] / "docs" / "migrating_from_dnnbrain.md"
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


GETTING_STARTED = ROOT / "docs" / "getting_started.md"
INSTALL_LINE = 'pip install -e ".[tutorials]"'


def _walkthrough_commands() -> list[str]:
    """Every command of the getting-started page, in order (the lines of its bash blocks)."""
    commands, inside = [], False
    for line in GETTING_STARTED.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash" if not inside else False
            continue
        if inside and line.strip() and not line.lstrip().startswith("#"):
            commands.append(line.strip())
    return commands


def test_getting_started_commands_run(tmp_path: Path) -> None:
    """The newcomer's walk-through, command by command, in a scratch copy of tutorials/:
    a real virtual environment (on the system site-packages, where CI installed the
    package), the demo, a tutorial executed as a notebook, the CLI on a photo folder.
    In the default suite: three torch imports (demo, kernel, CLI), the rest is cheap."""
    import shutil
    import subprocess
    import sys

    commands = _walkthrough_commands()
    assert commands[0].startswith("python -m venv") and INSTALL_LINE in commands
    assert any(c.startswith("dnnbrain-captum demo") for c in commands)
    assert any(c.startswith("jupytext --to notebook") for c in commands)
    assert any(c.startswith("jupyter execute --inplace") for c in commands)
    assert any(c.startswith("dnnbrain-captum saliency photos/") for c in commands)
    shutil.copytree(ROOT / "tutorials", tmp_path / "tutorials")
    script = ["set -euo pipefail"]
    for command in commands:
        if command == INSTALL_LINE:
            command = "true  # installed by CI's own install step (.ci/run)"
        if command.startswith("dnnbrain-captum") and not shutil.which("dnnbrain-captum"):
            command = "python -m dnnbrain_captum.cli" + command[len("dnnbrain-captum") :]
        script.append(command)
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", FIGURES_ENV)}
    env.update(
        DNNBRAIN_CAPTUM_FAST="1",
        TORCH_HOME=str(tmp_path / "torch"),
        PYTHONPATH=str(ROOT),
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
    )
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / ".venv" / "bin" / "activate").is_file()
    assert (tmp_path / "demo_out" / "index.html").is_file()
    notebook = json.loads((tmp_path / "tutorials" / "01_saliency.ipynb").read_text())
    outputs = [o for c in notebook["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
    assert "resnet18 has random weights (seeded with --seed 0)" in done.stderr
    assert "(4, 3, 224, 224)" in done.stdout  # four photos, cropped to ResNet's 224
    assert "photos/astronaut.png" in done.stdout  # results.json's images: the row order
    saliency = {p.name for p in (tmp_path / "photo_saliency").iterdir()}
    assert {"result.npy", "results.json", "000_astronaut_saliency.png"} <= saliency
