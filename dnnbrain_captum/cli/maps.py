"""``dnnbrain-captum occlusion`` and ``upsample``: occluder discrepancy and upsampled
activation maps."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from dnnbrain_captum.cli._args import (
    PROG,
    CLIError,
    Subcommand,
    _baseline_value,
    _channel_option,
    _common_options,
    _occluder_options,
    _pair_arg,
    _positive,
    _register,
    _stream_options,
)

if TYPE_CHECKING:
    from dnnbrain_captum.cli._common import RunContext


def _add_occlusion(parser: argparse.ArgumentParser) -> None:
    _common_options(parser)
    _channel_option(parser)
    _occluder_options(parser)
    parser.add_argument(
        "--engine",
        choices=("auto", "incremental", "full"),
        default="auto",
        help="incremental: recompute only the part of each layer a window changes (exact); "
        "full: whole forward passes; auto: incremental where the model allows it",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch")
    _stream_options(parser)


def occlusion_options(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    """Keyword arguments of ``OccluderDiscrepancyMapping.attribute`` from the command line."""
    default_window = 8 if model_name == "digits" else 11
    return {
        "sliding_window_shapes": _pair_arg(args.window, "--window")
        or (default_window, default_window),
        "strides": _pair_arg(args.stride, "--stride") or (2, 2),
        "baselines": _baseline_value(args.baseline),
        "reduction": args.reduction,
        "method": args.engine,
        "perturbations_per_eval": _positive(
            args.perturbations_per_eval, "--perturbations-per-eval"
        ),
    }


def _run_occlusion(args: argparse.Namespace, ctx: RunContext) -> None:
    import torch

    from dnnbrain_captum.attr import OccluderDiscrepancyMapping
    from dnnbrain_captum.cli._common import _targets_for
    from dnnbrain_captum.visualization import occlusion_figure

    assert ctx.images is not None and ctx.display is not None
    options = occlusion_options(args, ctx.model_name)
    window = options["sliding_window_shapes"]
    if window[0] > ctx.image_size[0] or window[1] > ctx.image_size[1]:
        raise CLIError(
            f"--window {window[0]} {window[1]} is larger than the {ctx.image_size[0]}x"
            f"{ctx.image_size[1]} images"
        )
    explainer = OccluderDiscrepancyMapping(ctx.model, ctx.layer)
    parts, used = [], []
    batch_size = _positive(args.batch_size, "--batch-size")
    for _, batch in ctx.batches(batch_size, "occlusion"):
        targets = _targets_for(ctx, args.channel, batch)
        used.extend(targets if isinstance(targets, list) else [targets] * batch.shape[0])
        parts.append(
            explainer.attribute(
                batch, target=targets, show_progress=ctx.progress, **options
            ).detach()
        )
    result = torch.cat(parts)
    ctx.save_result(result)
    ctx.record["targets"] = used
    ctx.record["options"] = {k: v for k, v in options.items() if k != "perturbations_per_eval"}
    for k in range(ctx.n_figures(result.shape[0])):
        what = f"channel {used[k]}" if ctx.layer is not None else f"class {used[k]}"
        fig = occlusion_figure(
            result[k], ctx.display[k], window, options["strides"], title=f"occlusion, {what}"
        )
        ctx.save_figure(ctx.figure_name(k, "occlusion"), fig)


def _add_upsample(parser: argparse.ArgumentParser) -> None:
    _common_options(parser)
    _channel_option(parser, layer_required=True)
    parser.add_argument(
        "--interpolate",
        choices=("nearest", "bilinear", "bicubic", "area"),
        default="bicubic",
        help="interpolation of the channel map to the image size",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="Q",
        help="raise values below the Q-quantile (in [0, 1]) to it (DNNBrain's interp_threshold)",
    )
    parser.add_argument(
        "--binarize", action="store_true", help="with --threshold: 1 above the quantile, else 0"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch")
    _stream_options(parser)


def _run_upsample(args: argparse.Namespace, ctx: RunContext) -> None:
    import torch

    from dnnbrain_captum.attr import UpsamplingActivationMapping
    from dnnbrain_captum.visualization import activation_map_figure

    assert ctx.images is not None and ctx.display is not None
    if args.channel is None:
        raise CLIError(f"--channel is required with --layer {ctx.layer_name} (0-based)")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise CLIError(f"--threshold must lie in [0, 1], got {args.threshold}")
    if args.binarize and args.threshold is None:
        raise CLIError("--binarize needs --threshold")
    explainer = UpsamplingActivationMapping(ctx.model, ctx.layer)
    parts = [
        explainer.attribute(
            batch,
            target=args.channel,
            interpolate_mode=args.interpolate,
            threshold=args.threshold,
            binarize=args.binarize,
        )
        for _, batch in ctx.batches(_positive(args.batch_size, "--batch-size"), "upsample")
    ]
    result = torch.cat(parts)
    ctx.save_result(result)
    for k in range(ctx.n_figures(result.shape[0])):
        fig = activation_map_figure(
            result[k], ctx.display[k], title=f"{ctx.layer_name} channel {args.channel}"
        )
        ctx.save_figure(ctx.figure_name(k, "upsample"), fig)


_register(
    Subcommand(
        name="occlusion",
        help="how much a channel or class drops when a window of the image is covered",
        description="Occluder discrepancy map: slide a window over each image and record "
        "original minus occluded value of the target. Writes result.npy (N, rows, cols) with "
        "rows = floor((H - window) / stride) + 1, and one figure per image.",
        example=f"{PROG} occlusion --digits 4 --layer conv5 --channel 3 --window 8 --stride 2 "
        "--out occlusion/",
        add_arguments=_add_occlusion,
        run=_run_occlusion,
        needs_layer=False,
    )
)
_register(
    Subcommand(
        name="upsample",
        help="a channel's activation map interpolated to the image size",
        description="Upsampled activation map of one channel of --layer. Writes result.npy "
        "(N, H, W) and one figure per image.",
        example=f"{PROG} upsample photos/ --model vgg16 --weights DEFAULT --layer conv8 "
        "--channel 5 --threshold 0.95 --out maps/",
        add_arguments=_add_upsample,
        run=_run_upsample,
    )
)
