"""Support matrix: every torchvision classification model x every algorithm.

For each architecture of ``torchvision.models.list_models(module=torchvision.models)`` (random
weights, one small image) every algorithm of the package runs at a layer in the middle of the
network (the median, in execution order, of the blocks whose output has a grid of units).
Each cell is ``works``, ``refused`` (a documented refusal: ``ValueError``, ``TypeError`` or
``UnsupportedOperationError`` raised by the package with its message) or ``crash``
(anything else: a bug).

Usage (results appended to a JSON-lines file as each model finishes, resumable;
``--isolate`` runs each model in its own subprocess)::

    python benchmarks/support_matrix.py --out benchmarks/support_matrix.jsonl
    python benchmarks/support_matrix.py --out ... --models resnet18 vit_b_16
    python benchmarks/support_matrix.py --table benchmarks/support_matrix.jsonl \\
        --write-docs docs/architectures.md

Inputs are small (64 x 64 for CNNs, 96 for Inception-v3, 224 for MaxViT whose partitions
need it, ViTs built with an ``image_size`` of three patches); settings are the cheapest that
exercise each algorithm (2 synthesis steps, a 2 x 2 occlusion grid, ...).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ALGORITHMS = (
    "VanillaSaliencyImage",
    "GuidedSaliencyImage",
    "SmoothGrad",
    "UpsamplingActivationMapping",
    "OccluderDiscrepancyMapping",
    "SynthesisImage",
    "MaskedImage",
    "MinimalParcelImage",
    "MinimalComponentImage",
    "TheoreticalReceptiveField",
    "EmpiricalReceptiveField",
)


def build(name: str) -> tuple[nn.Module, int]:
    """The model with random weights and the side of the square input it gets."""
    import torchvision.models as tm

    kwargs: dict[str, Any] = {"weights": None}
    size = 64
    if name.startswith("vit_"):
        patch = int(name.split("_")[-1])
        size = 3 * patch
        kwargs["image_size"] = size
    elif name == "maxvit_t":
        size = 224
    elif name == "inception_v3":
        size = 96
        kwargs.update(aux_logits=False, init_weights=False)
    elif name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=False)
    torch.manual_seed(0)
    return tm.get_model(name, **kwargs).eval(), size


def middle_layer(model: nn.Module, size: int) -> str:
    """The median, in execution order, of the modules with children or convolutions whose
    output has a grid of more than one unit (from the theoretical receptive-field table)."""
    from dnnbrain_captum import TheoreticalReceptiveField

    table = TheoreticalReceptiveField(model, (3, size, size)).compute()
    modules = dict(model.named_modules())
    candidates = [
        key
        for key in table
        if key in modules
        and table[key].spatial
        and table[key].output_size not in (None, (1, 1))
        and (list(modules[key].children()) or isinstance(modules[key], nn.Conv2d))
        and not isinstance(modules[key], nn.MultiheadAttention)  # returns a tuple
        and key.count(".") <= 3
    ]
    return candidates[len(candidates) // 2]


def _cells(model: nn.Module, layer: str, x: Tensor) -> dict[str, Callable[[], Any]]:
    from captum.attr import NoiseTunnel

    import dnnbrain_captum as dc

    h, w = x.shape[-2:]
    half = (h // 2, w // 2)
    # 3 x 3 parcels: a fixed segmentation, so the cell tests the search, not skimage on noise
    rows = torch.arange(h)[:, None] * 3 // h
    parcels = rows * 3 + torch.arange(w)[None, :] * 3 // w
    return {
        "VanillaSaliencyImage": lambda: dc.VanillaSaliencyImage(model, layer).attribute(
            x, target=0
        ),
        "GuidedSaliencyImage": lambda: dc.GuidedSaliencyImage(model, layer).attribute(x, target=0),
        "SmoothGrad": lambda: NoiseTunnel(dc.VanillaSaliencyImage(model, layer)).attribute(
            x, nt_type="smoothgrad", nt_samples=2, stdevs=0.1, target=0
        ),
        "UpsamplingActivationMapping": lambda: dc.UpsamplingActivationMapping(
            model, layer
        ).attribute(x, target=0),
        "OccluderDiscrepancyMapping": lambda: dc.OccluderDiscrepancyMapping(model, layer).attribute(
            x, target=0, sliding_window_shapes=half, strides=half
        ),
        "SynthesisImage": lambda: dc.SynthesisImage(model, layer).attribute(x, target=0, n_iter=2),
        "MaskedImage": lambda: dc.MaskedImage(model, layer).attribute(x, target=0, max_iter=3),
        "MinimalParcelImage": lambda: dc.MinimalParcelImage(model, layer).attribute(
            x, target=0, feature_mask=parcels
        ),
        "MinimalComponentImage": lambda: dc.MinimalComponentImage(model, layer).attribute(
            x, target=0, patch_size=max(h // 4, 2), n_components=4, max_components=4
        ),
        "TheoreticalReceptiveField": lambda: dc.TheoreticalReceptiveField(
            model, (3, h, w)
        ).find_region(layer, (0, 0)),
        "EmpiricalReceptiveField": lambda: dc.EmpiricalReceptiveField(
            dc.UpsamplingActivationMapping(model, layer)
        ).attribute(x, target=0),
    }


def _outcome(run: Callable[[], Any]) -> tuple[str, str]:
    from dnnbrain_captum.receptive_field import UnsupportedOperationError

    try:
        run()
    except (ValueError, TypeError, UnsupportedOperationError) as err:
        frames = traceback.extract_tb(err.__traceback__)
        ours = any("dnnbrain_captum" in f.filename for f in frames[-1:])
        return ("refused" if ours else "crash"), f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - every other error is a crash to report
        return "crash", f"{type(err).__name__}: {err}"
    return "works", ""


def run_model(name: str) -> dict[str, Any]:
    """Every algorithm on ``name``: ``{"model", "layer", "size", "cells": {alg: [status,
    message]}, "seconds"}``."""
    start = time.perf_counter()
    model, size = build(name)
    try:
        layer = middle_layer(model, size)
    except Exception as err:  # noqa: BLE001
        cells = {a: ["crash", f"no layer: {type(err).__name__}: {err}"] for a in ALGORITHMS}
        return {"model": name, "layer": None, "size": size, "cells": cells}
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    cells = {alg: list(_outcome(run)) for alg, run in _cells(model, layer, x).items()}
    seconds = round(time.perf_counter() - start, 1)
    record = {"model": name, "layer": layer, "size": size, "cells": cells, "seconds": seconds}
    return {**record, "commit": _commit()}


def _commit() -> str | None:
    """The package checkout's commit (``+`` when it has uncommitted changes), or None."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "dnnbrain_captum"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return f"{head}{'+' if dirty else ''}" or None


def sweep(out: Path, names: list[str], timeout: float, isolate: bool) -> None:
    """Run every model not yet in ``out``, in this process or (``isolate``) each in its own
    subprocess; one JSON line per model is appended as soon as it is done."""
    done = (
        {json.loads(line)["model"] for line in out.read_text().splitlines()}
        if (out.exists())
        else set()
    )
    for name in names:
        if name in done:
            continue
        if not isolate:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                record = run_model(name)
            gc.collect()
            with out.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(name, record.get("seconds"), flush=True)
            continue
        try:
            result = subprocess.run(
                [sys.executable, __file__, "--one", name],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
            record = (
                json.loads(lines[-1])
                if lines
                else {
                    "model": name,
                    "layer": None,
                    "cells": {a: ["crash", result.stderr[-300:]] for a in ALGORITHMS},
                }
            )
        except subprocess.TimeoutExpired:
            record = {
                "model": name,
                "layer": None,
                "cells": {a: ["timeout", f"over {timeout} s"] for a in ALGORITHMS},
            }
        with out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(name, record.get("seconds"), flush=True)


def markdown(records: list[dict[str, Any]]) -> str:
    """The support table (one row per model) with the refusal reasons below it."""
    short = ["Van", "Gui", "SG", "Up", "Occ", "Syn", "Mask", "Parc", "Comp", "TRF", "ERF"]
    lines = ["| model | layer | " + " | ".join(short) + " |", "|---|---|" + "---|" * len(short)]
    reasons: dict[str, int] = {}
    counts = {"works": 0, "refused": 0, "crash": 0, "timeout": 0}
    for record in sorted(records, key=lambda r: r["model"]):
        marks = []
        for alg in ALGORITHMS:
            status, message = record["cells"][alg]
            counts[status] = counts.get(status, 0) + 1
            if status == "works":
                marks.append("✓")
                continue
            key = message.split("\n")[0][:200]
            number = reasons.setdefault(key, len(reasons) + 1)
            marks.append(f"{'refused' if status == 'refused' else status.upper()} [{number}]")
        layer = f"`{record['layer']}`" if record["layer"] else "-"
        lines.append(f"| {record['model']} | {layer} | " + " | ".join(marks) + " |")
    total = sum(counts.values())
    summary = (
        f"{len(records)} models x {len(ALGORITHMS)} algorithms = {total} cells: "
        f"{counts['works']} work ({100 * counts['works'] / max(total, 1):.1f} %), "
        f"{counts['refused']} refused, {counts['crash']} crash, "
        f"{counts.get('timeout', 0)} timeout."
    )
    notes = [f"{n}. {text}" for text, n in sorted(reasons.items(), key=lambda kv: kv[1])]
    legend = (
        "Columns: " + ", ".join(f"{s} = {a}" for s, a in zip(short, ALGORITHMS, strict=True)) + "."
    )
    return "\n".join([summary, "", legend, "", *lines, "", "Reasons:", "", *notes, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="JSON-lines results file (appended)")
    parser.add_argument("--models", nargs="*", help="default: every torchvision classifier")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--isolate", action="store_true", help="one subprocess per model")
    parser.add_argument("--table", type=Path, help="results file to turn into Markdown")
    parser.add_argument("--write-docs", type=Path, help="Markdown page to (re)write")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.one:
        print(json.dumps(run_model(args.one)))
        return
    if args.table:
        records = [json.loads(line) for line in args.table.read_text().splitlines()]
        table = markdown(records)
        if args.write_docs:
            write_docs(args.write_docs, table)
        else:
            print(table)
        return
    import torchvision

    names = args.models or torchvision.models.list_models(module=torchvision.models)
    sweep(args.out, names, args.timeout, args.isolate)


def write_docs(page: Path, table: str) -> None:
    """Replace the generated part of ``page`` (between the two markers) by ``table``."""
    begin, end = "<!-- support-matrix:begin -->", "<!-- support-matrix:end -->"
    text = page.read_text()
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    tmp = page.with_suffix(".tmp")
    tmp.write_text(f"{head}{begin}\n{table}\n{end}{tail}")
    tmp.replace(page)


if __name__ == "__main__":
    main()
