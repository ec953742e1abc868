"""``dnnbrain-captum mask --synthesis DIR``: mask the images of a ``synthesize`` run, each for
the target it was synthesised for (Walker et al. 2019: synthesise, then mask).

The model, weights, layer, preprocessing and seed are those recorded in ``DIR/results.json``;
a differing ``--model``, ``--weights``, ``--layer``, ``--image-size`` or ``--seed`` is refused,
and so are IMAGE arguments, ``--digits``, ``--channel`` and ``--unit`` (the images and targets
come from the synthesis).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnnbrain_captum.cli._args import CLIError

if TYPE_CHECKING:
    from dnnbrain_captum.cli._common import RunContext

# the options that build the model and its input, with their command-line defaults
_INHERITED = {"model": "digits", "weights": None, "layer": None, "image_size": None, "seed": 0}


def _synthesis_record(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CLIError(f"--synthesis {folder}: cannot read {path.name}: {err}") from None
    if not isinstance(record, dict) or record.get("command") != "synthesize":
        raise CLIError(f"--synthesis {folder} holds no synthesize run (its {path.name} says so)")
    if not (folder / "result.npy").is_file():
        raise CLIError(f"--synthesis {folder}: result.npy is missing")
    return record


def prepare_synthesis(args: argparse.Namespace) -> None:
    """Take the model options of the ``synthesize`` run in ``args.synthesis`` (before the
    model is built); refuse options that would contradict it."""
    folder = Path(args.synthesis)
    record = _synthesis_record(folder)
    given = [
        name
        for name, value in (
            ("IMAGE", args.images),
            ("--digits", args.digits),
            ("--channel", args.channel),
            ("--unit", args.unit),
        )
        if value
    ]
    if given:
        raise CLIError(
            f"--synthesis {folder} gives the images and targets; drop {', '.join(given)}"
        )
    recorded = record.get("arguments", {})
    for name, default in _INHERITED.items():
        value, theirs = getattr(args, name), recorded.get(name, default)
        if value != default and value != theirs:
            option = "--" + name.replace("_", "-")
            raise CLIError(
                f"{option} {value} differs from the synthesis run in {folder} ({theirs!r})"
            )
        setattr(args, name, theirs)


def load_synthesis(args: argparse.Namespace, ctx: RunContext) -> list[Any]:
    """Put the synthesised images into ``ctx`` (model space, display copies, names) and
    return their targets, one per image."""
    import numpy as np
    import torch

    folder = Path(args.synthesis)
    record = _synthesis_record(folder)
    images = torch.from_numpy(np.load(folder / "result.npy"))
    if images.ndim != 4 or tuple(images.shape[2:]) != tuple(ctx.image_size):
        raise CLIError(
            f"--synthesis {folder}: result.npy has shape {tuple(images.shape)}, not "
            f"(K, 3, {ctx.image_size[0]}, {ctx.image_size[1]})"
        )
    targets = [tuple(t) if isinstance(t, list) else t for t in record.get("targets", [])]
    if len(targets) != images.shape[0]:
        raise CLIError(f"--synthesis {folder}: {len(targets)} targets for {len(images)} images")
    ctx.images = images.to(ctx.device)
    ctx.display = ctx.to_display(images)
    ctx.names = [f"synthesis{k}" for k in range(len(targets))]
    ctx.sources = [f"{folder / 'result.npy'}[{k}]" for k in range(len(targets))]
    return targets
