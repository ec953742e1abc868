"""``dnnbrain-captum atlas``: a browsable unit atlas of some layers over a stimulus set.

Unlike the other subcommands it writes straight into ``--out`` (no staging folder): the atlas is
built on :func:`dnnbrain_captum.run_over`, so an interrupted atlas is resumed by rerunning the
same command, and it may run under ``torchrun``. It only ever writes files it records in
``DIR/atlas-files.txt``; a folder holding anything else is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dnnbrain_captum.cli._args import (
    PROG,
    CLIError,
    Subcommand,
    _common_options,
    _positive,
    _reduction_option,
    _register,
)
from dnnbrain_captum.cli.demo import DemoPanel

if TYPE_CHECKING:
    from dnnbrain_captum.cli._common import RunContext


def _add_atlas(parser: argparse.ArgumentParser) -> None:
    _common_options(parser, layers=True)
    group = parser.add_argument_group("atlas")
    group.add_argument(
        "--channels",
        default=None,
        metavar="SPEC",
        help="0-BASED channels of every --layer: 3, 0,4,7, 0-7 or a mix (default: every channel)",
    )
    group.add_argument(
        "--top-k",
        type=int,
        default=9,
        metavar="K",
        help="top (and bottom) stimuli kept per channel",
    )
    group.add_argument(
        "--syntheses",
        type=int,
        default=3,
        metavar="S",
        help="syntheses per channel (different random starts)",
    )
    group.add_argument(
        "--synthesis-steps",
        type=int,
        default=64,
        metavar="N",
        help="optimisation steps of each synthesis",
    )
    group.add_argument(
        "--diversity",
        type=float,
        default=0.0,
        metavar="W",
        help="weight of the diversity objective between a channel's syntheses (0: off; they "
        "still start from different random images)",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        default=64,
        metavar="B",
        help="images per batch and per resumable chunk",
    )
    _reduction_option(group)  # type: ignore[arg-type]


def _diversity(weight: float) -> dict[str, float]:
    if not weight >= 0.0 or weight == float("inf"):
        raise CLIError(f"--diversity must be a finite number >= 0, got {weight}")
    return {"diversity": weight} if weight > 0 else {}


def _run_atlas(args: argparse.Namespace, ctx: RunContext | None = None) -> None:
    """Build the atlas into ``--out`` (called by the driver without a staging folder)."""
    from dnnbrain_captum.atlas import build_atlas
    from dnnbrain_captum.cli._stream import _stimuli

    layers = list(args.layer or [])
    if not layers:
        raise CLIError("atlas needs --layer (repeat it for several layers), e.g. --layer conv5")
    for value, name in (
        (args.top_k, "--top-k"),
        (args.syntheses, "--syntheses"),
        (args.synthesis_steps, "--synthesis-steps"),
        (args.batch_size, "--batch-size"),
    ):
        _positive(value, name)
    out = Path(args.out)
    context_args = argparse.Namespace(**{**vars(args), "layer": None})
    from dnnbrain_captum.cli._common import _make_context

    ctx = _make_context(context_args, ATLAS, load_images=False)
    data = _stimuli(args, ctx)
    args._streamed_into = out  # an interrupted atlas keeps its finished chunks
    summary = build_atlas(
        ctx.model,
        layers,
        data,
        out,
        channels=args.channels,
        top_k=args.top_k,
        reduction=args.reduction,
        n_syntheses=args.syntheses,
        synthesis={"n_iter": args.synthesis_steps, **_diversity(args.diversity)},
        mean=ctx.mean,
        std=ctx.std,
        batch_size=args.batch_size,
        seed=args.seed,
        overwrite=args.overwrite,
        show_progress=ctx.progress,
    )
    if not args.quiet and summary.rank == 0:
        n_channels = sum(len(c) for c in summary.channels.values())
        sys.stderr.write(
            f"{PROG} atlas: {n_channels} channels of {len(layers)} layer"
            f"{'' if len(layers) == 1 else 's'} over {summary.n_stimuli} images in "
            f"{summary.seconds:.1f} s; open {summary.index}\n"
        )


ATLAS = _register(
    Subcommand(
        "atlas",
        "a browsable unit atlas: top stimuli, maps, receptive fields, syntheses per channel",
        "For every selected channel of each --layer: the top-K and bottom-K images by the "
        "channel's activation (one pass over the images for every channel at once), their "
        "upsampled activation and occlusion maps, the theoretical and empirical receptive "
        "fields, a few syntheses and the minimal image of the top image. Writes a static site "
        "(DIR/index.html, DIR/<layer>/<channel>.html) and DIR/atlas.json. Resumable: rerun "
        "the same command after an interruption; runs under torchrun.",
        f"{PROG} atlas --digits 100 --layer conv3 --layer conv5 --channels 0-7 --top-k 9 "
        "--out atlas/",
        _add_atlas,
        _run_atlas,
        needs_images=True,
        needs_layer=False,
    )
)


def demo_atlas(ctx: RunContext, quick: bool) -> DemoPanel:
    """``demo --atlas``: a small atlas of conv5 (8 channels, 32 or 64 digits) in
    ``DIR/atlas``."""
    import time

    from dnnbrain_captum.atlas import build_atlas
    from dnnbrain_captum.models import digits_images

    started = time.perf_counter()
    images, _ = digits_images(n=32 if quick else 64)
    build_atlas(
        ctx.model,
        ["conv5"],
        images.to(ctx.device),
        ctx.out / "atlas",
        channels="0-7",
        top_k=4 if quick else 6,
        n_syntheses=1,
        synthesis={"n_iter": 8 if quick else 32},
        show_progress=ctx.progress,
    )
    ctx.files.append("atlas")
    return DemoPanel(
        "Unit atlas",
        "Eight channels of conv5 over the first held-out digits: for each, the top and bottom "
        "digits, activation and occlusion maps, receptive fields, a synthesis and a minimal "
        "image, one page per channel.",
        f"{PROG} atlas --digits {len(images)} --layer conv5 --channels 0-7 --out atlas/",
        ["atlas/index.html", *(f"atlas/conv5/img/{c}_syn0.png" for c in range(4))],
        time.perf_counter() - started,
    )
