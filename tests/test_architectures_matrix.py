"""The support matrix (benchmarks/support_matrix.py): every algorithm at a middle layer.

The default suite runs a representative sample (tiny ViT, Swin, MaxViT and ConvNeXt
configurations and SqueezeNet); the full sweep over every torchvision classifier is slow.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.test_architectures import tiny_convnext, tiny_maxvit, tiny_swin, tiny_vit

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "support_matrix.py"
_SPEC = importlib.util.spec_from_file_location("support_matrix", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
matrix = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(matrix)


def _cells(model: nn.Module, layer: str, size: int) -> dict[str, tuple[str, str]]:
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {a: matrix._outcome(run) for a, run in matrix._cells(model, layer, x).items()}


@pytest.mark.parametrize(
    ("factory", "layer"),
    [
        (tiny_vit, "encoder.layers.encoder_layer_1"),  # tokens with a class token
        (tiny_swin, "features.1.1"),  # (N, H, W, C)
        (tiny_maxvit, "blocks.0.layers.0"),  # block and grid attention
        (tiny_convnext, "features.1.0.block.3"),  # Linear between permutes: (N, H, W, C)
    ],
    ids=["vit", "swin", "maxvit", "convnext"],
)
def test_every_algorithm_works_on_small_transformers_and_modern_cnns(factory, layer) -> None:
    cells = _cells(factory(), layer, 32)
    # windowed attention (Swin, MaxViT): the empirical field aligns on each unit's region
    assert {a: v for a, v in cells.items() if v[0] != "works"} == {}


def test_a_torchvision_classifier_row_as_the_sweep_runs_it() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = matrix.run_model("squeezenet1_1")  # random weights, 64 x 64, middle layer
    assert (record["layer"], record["size"]) == ("features.7.expand3x3", 64)
    assert {a: c for a, c in record["cells"].items() if c[0] != "works"} == {}
    assert list(record["cells"]) == list(matrix.ALGORITHMS)


def test_the_middle_layer_is_a_block_with_a_grid() -> None:
    assert matrix.middle_layer(tiny_vit(), 32) == "encoder.layers.encoder_layer_0"
    assert matrix.middle_layer(tiny_swin(), 32) == "features.1.1.mlp"


def test_the_table_is_generated_from_results() -> None:
    ok = ["works", ""]
    records = [
        {"model": "a", "layer": "x.1", "cells": {alg: ok for alg in matrix.ALGORITHMS}},
        {"model": "b", "layer": "y", "cells": {alg: ok for alg in matrix.ALGORITHMS}},
    ]
    records[1]["cells"]["EmpiricalReceptiveField"] = ["refused", "ValueError: no grid"]
    text = matrix.markdown(records)
    assert "2 models x 11 algorithms = 22 cells: 21 work (95.5 %), 1 refused, 0 crash" in text
    assert "| b | `y` | ✓ |" in text and "refused [1]" in text and "1. ValueError: no grid" in text


@pytest.mark.slow
def test_every_torchvision_classifier_with_every_algorithm() -> None:
    import torchvision

    records = []
    for name in torchvision.models.list_models(module=torchvision.models):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records.append(matrix.run_model(name))
    statuses = [cell[0] for r in records for cell in r["cells"].values()]
    crashes = [
        (r["model"], a, c[1])
        for r in records
        for a, c in r["cells"].items()
        if c[0] not in ("works", "refused")
    ]
    assert crashes == []
    assert statuses.count("works") >= 0.95 * len(statuses)
