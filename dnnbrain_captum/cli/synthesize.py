"""``dnnbrain-captum synthesize``: images that drive a channel."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from dnnbrain_captum.cli._args import (
    PROG,
    CLIError,
    Subcommand,
    _channel_option,
    _common_options,
    _reduction_option,
    _register,
    _unit_option,
)

if TYPE_CHECKING:
    from torch import Tensor

    from dnnbrain_captum.cli._common import RunContext


def _add_synthesize(parser: argparse.ArgumentParser) -> None:
    _common_options(parser)
    _channel_option(parser, multiple=True)
    _unit_option(
        parser,
        "maximise this 0-based unit (row, column) of each channel instead of the channel's mean",
    )
    parser.add_argument(
        "--preset",
        choices=("default", "lucent", "dnnbrain", "dnnbrain-guide"),
        default="default",
        help="named settings (default: Fourier parametrisation with colour decorrelation and "
        "random transforms; dnnbrain: the DNNBrain paper's pixels + TV settings)",
    )
    parser.add_argument("--n-iter", type=int, default=None, help="optimisation steps")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    parser.add_argument(
        "--param", choices=("pixel", "fft"), default=None, help="image parametrisation"
    )
    parser.add_argument(
        "--tv", type=float, default=None, metavar="W", help="total-variation regulariser weight"
    )
    parser.add_argument("--l1", type=float, default=None, metavar="W", help="L1 weight")
    parser.add_argument("--l2", type=float, default=None, metavar="W", help="L2 weight")
    parser.add_argument(
        "--blur-sigma",
        type=float,
        default=None,
        help="Gaussian-blur preconditioning sigma in pixels (DNNBrain's GB)",
    )
    parser.add_argument(
        "--fourier-factor",
        type=float,
        default=None,
        help="Fourier gradient smoothing factor (DNNBrain's smooth_metric)",
    )
    parser.add_argument(
        "--no-transforms",
        action="store_true",
        help="no random jitter/scale/rotation during optimisation",
    )
    parser.add_argument(
        "--init",
        choices=("grey", "uniform"),
        default="grey",
        help="random start when no IMAGE is given (one image, or one per "
        "channel, may be given instead)",
    )
    _reduction_option(parser)


def synthesis_options(args: argparse.Namespace, ctx: RunContext) -> dict[str, Any]:
    """Keyword arguments of ``SynthesisImage.attribute`` from the command line."""
    regularizers = {
        name: weight
        for name, weight in (("tv", args.tv), ("l1", args.l1), ("l2", args.l2))
        if weight is not None
    }
    options: dict[str, Any] = {
        "preset": args.preset,
        "reduction": args.reduction,
        "mean": ctx.mean,
        "std": ctx.std,
        "seed": args.seed,
        "return_history": True,
    }
    for key, value in (
        ("n_iter", args.n_iter),
        ("lr", args.lr),
        ("param", args.param),
        ("blur_sigma", args.blur_sigma),
        ("fourier_factor", args.fourier_factor),
    ):
        if value is not None:
            options[key] = value
    if regularizers:
        options["regularizers"] = regularizers
    if args.no_transforms:
        options["transforms"] = "none"
    return options


def synthesis_start(args: argparse.Namespace, ctx: RunContext, n: int) -> Tensor:
    """The initial images: the given images (one, or one per channel) or random ones."""
    from dnnbrain_captum.optim import random_images

    if ctx.images is None:
        return random_images(
            n,
            ctx.image_size,
            kind=args.init,
            seed=args.seed,
            mean=ctx.mean,
            std=ctx.std,
            device=ctx.device,
        )
    if ctx.images.shape[0] == 1:
        return ctx.images.expand(n, -1, -1, -1).clone()
    if ctx.images.shape[0] != n:
        raise CLIError(
            f"give one start image or one per channel: got {ctx.images.shape[0]} images for "
            f"{n} channels"
        )
    return ctx.images


def _run_synthesize(args: argparse.Namespace, ctx: RunContext) -> None:
    from dnnbrain_captum.optim import SynthesisImage
    from dnnbrain_captum.visualization import synthesis_grid

    if not args.channel:
        what = f"a channel of {ctx.layer_name}" if ctx.layer is not None else "a class"
        raise CLIError(f"synthesize needs --channel ({what}, 0-based; e.g. 0-7)")
    channels = list(args.channel)
    if args.unit is not None and ctx.layer is None:
        raise CLIError("--unit needs --layer")
    targets: list[Any] = (
        [(c, args.unit[0], args.unit[1]) for c in channels] if args.unit is not None else channels
    )
    start = synthesis_start(args, ctx, len(channels))
    options = synthesis_options(args, ctx)
    result = SynthesisImage(ctx.model, ctx.layer).attribute(
        start, target=targets, show_progress=ctx.progress, **options
    )
    ctx.save_result(result.images.detach(), rows="targets")
    ctx.save_array("activation.npy", result.activation.detach())
    ctx.record["targets"] = [list(t) if isinstance(t, tuple) else t for t in targets]
    shown = ctx.to_display(result.images)
    where = ctx.layer_name or "class"
    final = result.activation[:, -1].tolist()
    titles = [f"{where} {c}: {v:.3g}" for c, v in zip(channels, final, strict=True)]
    ctx.save_figure("synthesis.png", synthesis_grid(shown, titles))


_register(
    Subcommand(
        name="synthesize",
        help="images that maximise channels (activation maximisation), one per channel",
        description="Activation maximisation: optimise one image per --channel (a list such as "
        "0-7 synthesises a whole grid in one batch) so that the channel's mean (or --unit, or a "
        "class logit without --layer) is as large as possible. Writes result.npy (K, 3, H, "
        "W) in model space, activation.npy (K, n_iter + 1), the target's value along the "
        "optimisation, and synthesis.png.",
        example=f"{PROG} synthesize --layer conv5 --channel 0-7 --n-iter 64 --out synth/",
        add_arguments=_add_synthesize,
        run=_run_synthesize,
        needs_images=False,
        needs_layer=False,
    )
)
