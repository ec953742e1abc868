"""``dnnbrain-captum mask`` and ``minimal``: masked and minimal images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnnbrain_captum.cli._args import (
    PROG,
    CLIError,
    Subcommand,
    _channel_option,
    _common_options,
    _has_module,
    _reduction_option,
    _register,
    _unit_option,
)

if TYPE_CHECKING:
    from torch import Tensor

    from dnnbrain_captum.cli._common import RunContext


def _target_with_unit(
    ctx: RunContext, args: argparse.Namespace, batch: Tensor
) -> tuple[Any, list[Any]]:
    """The target of a batch (channel, unit or predicted classes) and its per-image record."""
    from dnnbrain_captum.cli._common import _targets_for

    unit = getattr(args, "unit", None)
    if unit is not None:
        if ctx.layer is None:
            raise CLIError("--unit needs --layer")
        if args.channel is None:
            raise CLIError(f"--channel is required with --layer {ctx.layer_name} (0-based)")
        target: Any = (args.channel, unit[0], unit[1])
        return target, [list(target)] * batch.shape[0]
    target = _targets_for(ctx, args.channel, batch)
    return target, target if isinstance(target, list) else [target] * batch.shape[0]


def _add_mask(parser: argparse.ArgumentParser) -> None:
    _common_options(parser)
    _channel_option(parser)
    _unit_option(parser, "explain this 0-based unit (row, column) of the channel")
    parser.add_argument(
        "--stdev-size-thr",
        type=float,
        default=1.0,
        help="contrast threshold in standard deviations",
    )
    parser.add_argument(
        "--filter-sigma", type=float, default=1.0, help="Gaussian blur of the mask in pixels"
    )
    parser.add_argument(
        "--ratio",
        type=float,
        default=0.9,
        help="erode as far as the activation stays at least RATIO x the hull image's",
    )
    parser.add_argument(
        "--synthesis",
        type=Path,
        default=None,
        metavar="DIR",
        help="mask the images of a synthesize run in DIR, each for its own target (model, "
        "layer and preprocessing from DIR/results.json; no IMAGE, --digits, --channel)",
    )
    parser.add_argument("--max-iter", type=int, default=100, help="most erosions tried")
    _reduction_option(parser)
    parser.add_argument(
        "--perturbations-per-eval",
        type=int,
        default=16,
        metavar="K",
        help="erosion depths per forward pass",
    )


def mask_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``MaskedImage.attribute`` from the command line."""
    return {
        "stdev_size_thr": args.stdev_size_thr,
        "filter_sigma": args.filter_sigma,
        "target_reduction_ratio": args.ratio,
        "max_iter": args.max_iter,
        "reduction": args.reduction,
        "perturbations_per_eval": args.perturbations_per_eval,
        "return_masks": True,
    }


def _run_mask(args: argparse.Namespace, ctx: RunContext) -> None:
    from dnnbrain_captum.attr.masked import MaskedImage
    from dnnbrain_captum.visualization import minimal_image_figure

    target: Any
    if args.synthesis is not None:
        from dnnbrain_captum.cli._from_synthesis import load_synthesis

        target = load_synthesis(args, ctx)
        used = [list(t) if isinstance(t, tuple) else t for t in target]
    assert ctx.images is not None and ctx.display is not None
    if args.synthesis is None:
        target, used = _target_with_unit(ctx, args, ctx.images)
    result = MaskedImage(ctx.model, ctx.layer).attribute(
        ctx.images, target=target, show_progress=ctx.progress, **mask_options(args)
    )
    ctx.save_result(result.images)
    ctx.save_array("masks.npy", result.masks)
    ctx.record["targets"] = used
    ctx.record["activation"] = result.activation.tolist()
    ctx.record["baseline"] = result.baseline.tolist()
    ctx.record["n_erosions"] = result.n_erosions.tolist()
    shown = ctx.to_display(result.images)
    for k in range(shown.shape[0]):
        fig = minimal_image_figure(
            ctx.display[k],
            shown[k],
            result.masks[k, 0],
            (
                "original" if args.synthesis is None else f"synthesis for {used[k]}",
                f"masked: {float(result.activation[k] / result.baseline[k]):.0%} of hull act.",
                f"mask ({int(result.n_erosions[k])} erosions)",
            ),
        )
        ctx.save_figure(ctx.figure_name(k, "mask"), fig)


PARCEL_METHODS = ("felzenszwalb", "slic", "quickshift")
COMPONENT_METHODS = ("pca", "ica")


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def _add_minimal(parser: argparse.ArgumentParser) -> None:
    _common_options(parser)
    _channel_option(parser)
    _unit_option(parser, "explain this 0-based unit (row, column) of the channel")
    parser.add_argument(
        "--method",
        choices=PARCEL_METHODS + COMPONENT_METHODS,
        default="felzenszwalb",
        help="superpixels (felzenszwalb, slic, quickshift: MinimalParcelImage) or image "
        "components (pca, ica: MinimalComponentImage)",
    )
    parser.add_argument(
        "--search",
        choices=("max", "fitting_curve", "threshold", "removal"),
        default="removal",
        help="how the kept parcels/components are chosen",
    )
    parser.add_argument(
        "--activation-criterion",
        choices=("max", "mean", "median", "L1", "L2"),
        default="max",
        help="pooling of a channel's map into one activation",
    )
    parser.add_argument(
        "--ratio",
        type=float,
        default=0.9,
        help="fraction of the original activation to keep (threshold, removal)",
    )
    parser.add_argument(
        "--max-parts",
        type=int,
        default=None,
        metavar="K",
        help="longest ranking prefix considered (DNNBrain: 10)",
    )
    parser.add_argument(
        "--segment",
        type=_key_value,
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="segmentation option, e.g. n_segments=50 (repeatable)",
    )
    parser.add_argument(
        "--baseline",
        default="0",
        help="value of removed pixels in model space, or 'mean' (parcels)",
    )
    _add_component_options(parser)
    parser.add_argument(
        "--perturbations-per-eval",
        type=int,
        default=64,
        metavar="K",
        help="candidate images per forward pass",
    )


def _add_component_options(parser: argparse.ArgumentParser) -> None:
    """Options of ``minimal`` that only the image components (pca, ica) read."""
    parser.add_argument(
        "--sampling",
        choices=("patches", "pixels"),
        default="patches",
        help="what a sample is for pca/ica",
    )
    parser.add_argument("--patch-size", type=int, default=8, help="tile side for pca/ica")
    parser.add_argument(
        "--n-components",
        type=int,
        default=None,
        help="components per image for pca/ica (default: full rank)",
    )


def minimal_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of the minimal-image class chosen by ``--method``."""
    common: dict[str, Any] = {
        "search_criterion": args.search,
        "activation_criterion": args.activation_criterion,
        "activation_ratio": args.ratio,
        "perturbations_per_eval": args.perturbations_per_eval,
    }
    if args.method in COMPONENT_METHODS:
        return {
            **common,
            "decomposition": args.method,
            "sampling": args.sampling,
            "patch_size": args.patch_size,
            "n_components": args.n_components,
            "max_components": args.max_parts,
            "seed": args.seed,
        }
    baseline: Any = args.baseline
    if baseline != "mean":
        try:
            baseline = float(baseline)
        except ValueError:
            raise CLIError(f"--baseline must be a number or 'mean', got {baseline!r}") from None
    return {
        **common,
        "segmentation": args.method,
        "segmentation_kwargs": dict(args.segment) if args.segment else None,
        "baselines": baseline,
        "max_parcels": args.max_parts,
    }


def _run_minimal(args: argparse.Namespace, ctx: RunContext) -> None:
    from dnnbrain_captum.visualization import minimal_image_figure

    assert ctx.images is not None and ctx.display is not None
    target, used = _target_with_unit(ctx, args, ctx.images)
    options = minimal_options(args)
    components = args.method in COMPONENT_METHODS
    if components:
        from dnnbrain_captum.attr.minimal_component import MinimalComponentImage

        explainer: Any = MinimalComponentImage(ctx.model, ctx.layer)
    else:
        from dnnbrain_captum.attr.minimal import MinimalParcelImage

        explainer = MinimalParcelImage(ctx.model, ctx.layer)
    result = explainer.attribute(ctx.images, target=target, show_progress=ctx.progress, **options)
    ctx.save_result(result.images)
    if components:
        ctx.save_array("selected.npy", result.selected)
        total = [int(result.selected.shape[1])] * result.images.shape[0]
    else:
        ctx.save_array("kept.npy", result.masks)
        ctx.save_array("parcels.npy", result.labels)
        total = result.n_parcels.tolist()
    ctx.record["targets"] = used
    ctx.record["n_selected"] = result.n_selected.tolist()
    ctx.record["n_total"] = total
    ctx.record["activation"] = result.activation.tolist()
    ctx.record["original_activation"] = result.original_activation.tolist()
    shown = ctx.to_display(result.images)
    part = "components" if components else "parcels"
    for k in range(shown.shape[0]):
        kept = None if components else result.masks[k].float()
        titles = (
            "original",
            f"minimal: {int(result.n_selected[k])} of {total[k]} {part}",
            "kept pixels",
        )
        fig = minimal_image_figure(ctx.display[k], shown[k], kept, titles)
        ctx.save_figure(ctx.figure_name(k, "minimal"), fig)


if _has_module("dnnbrain_captum.attr.masked"):
    _register(
        Subcommand(
            name="mask",
            help="tight mask around the high-contrast region that still drives a channel",
            description="Masked image (Walker et al. 2019; DNNBrain's MaskedImage): the convex "
            "hull of the image's high-contrast pixels, blurred, then eroded as far as the "
            "target keeps --ratio of its activation on the hull image. Writes result.npy "
            "(N, 3, H, W), the masked images in model space, masks.npy (N, 1, H, W) and one "
            "figure per image; activations and erosion counts go into results.json. "
            "--synthesis DIR masks the images of a synthesize run instead, each for the unit "
            "or channel it was synthesised for.",
            example=f"{PROG} synthesize --layer conv3 --channel 0,5,9 --unit 4 4 --out mei/ && "
            f"{PROG} mask --synthesis mei/ --out mei_mask/",
            add_arguments=_add_mask,
            run=_run_mask,
            needs_layer=False,
        )
    )
if _has_module("dnnbrain_captum.attr.minimal") and _has_module(
    "dnnbrain_captum.attr.minimal_component"
):
    _register(
        Subcommand(
            name="minimal",
            help="the fewest superpixels (or PCA/ICA components) that still drive a channel",
            description="Minimal image: cut each image into superpixels (felzenszwalb, slic, "
            "quickshift; MinimalParcelImage) or image components (pca, ica; "
            "MinimalComponentImage) and keep the fewest that still drive the target (--search). "
            "Writes result.npy (N, 3, H, W), the minimal images in model space, kept.npy "
            "(N, H, W) and parcels.npy (N, H, W) for superpixels or selected.npy (N, K) for "
            "components, and one figure per image.",
            example=f"{PROG} minimal photo.jpg --model alexnet --weights alexnet.pth --layer "
            "conv5 --channel 121 --method slic --segment n_segments=100 --out minimal/",
            add_arguments=_add_minimal,
            run=_run_minimal,
            needs_layer=False,
        )
    )
