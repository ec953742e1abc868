"""``dnnbrain-captum saliency``: the gradient of a channel or class."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from dnnbrain_captum.cli._args import (
    PROG,
    CLIError,
    Subcommand,
    _channel_option,
    _common_options,
    _positive,
    _reduction_option,
    _register,
    _stream_options,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

    from dnnbrain_captum.cli._common import RunContext


def _add_saliency(parser: argparse.ArgumentParser) -> None:
    _common_options(parser)
    _channel_option(parser)
    parser.add_argument(
        "--method", choices=("vanilla", "guided"), default="vanilla", help="gradient rule"
    )
    parser.add_argument(
        "--smooth",
        type=int,
        default=0,
        metavar="N",
        help="SmoothGrad: average the gradient over N noisy copies (0: off)",
    )
    parser.add_argument(
        "--sigma-multiplier",
        type=float,
        default=0.1,
        help="SmoothGrad noise std as a fraction of each image's value range (DNNBrain's 0.1)",
    )
    parser.add_argument("--abs", action="store_true", help="absolute gradients (default signed)")
    _reduction_option(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch")
    _stream_options(parser)


def saliency_arrays(
    model: nn.Module,
    layer: nn.Module | None,
    images: Tensor,
    targets: Any,
    method: str = "vanilla",
    smooth: int = 0,
    sigma_multiplier: float = 0.1,
    abs: bool = False,
    reduction: str = "mean",
    seed: int = 0,
) -> Tensor:
    """What ``dnnbrain-captum saliency`` computes for one batch of model-ready images.

    Plain saliency is one batched call. SmoothGrad runs image by image with the noise seeded
    by ``seed`` before each image (so an image's result does not depend on its neighbours),
    σ = ``sigma_multiplier`` × that image's value range (DNNBrain's σ).

    Returns
    -------
    Tensor of shape (N, C, H, W)
    """
    import torch
    from captum.attr import NoiseTunnel

    from dnnbrain_captum.attr import GuidedSaliencyImage, VanillaSaliencyImage, smoothgrad_stdev

    cls = GuidedSaliencyImage if method == "guided" else VanillaSaliencyImage
    explainer = cls(model, layer)
    kwargs = {"abs": abs} if layer is None else {"abs": abs, "reduction": reduction}
    if smooth <= 0:
        return explainer.attribute(images, target=targets, **kwargs)
    per_image = targets if isinstance(targets, list) else [targets] * images.shape[0]
    results = []
    for k in range(images.shape[0]):
        x = images[k : k + 1]
        torch.manual_seed(seed)
        results.append(
            NoiseTunnel(explainer).attribute(
                x,
                nt_type="smoothgrad",
                nt_samples=smooth,
                stdevs=smoothgrad_stdev(x, sigma_multiplier),
                target=[per_image[k]],
                **kwargs,
            )
        )
    return torch.cat(results)


def _run_saliency(args: argparse.Namespace, ctx: RunContext) -> None:
    import torch

    from dnnbrain_captum.cli._common import _targets_for
    from dnnbrain_captum.visualization import saliency_figure

    if args.smooth < 0:
        raise CLIError(f"--smooth must be >= 0, got {args.smooth}")
    if args.sigma_multiplier < 0:
        raise CLIError(f"--sigma-multiplier must be >= 0, got {args.sigma_multiplier}")
    assert ctx.images is not None and ctx.display is not None
    parts, used = [], []
    for _, batch in ctx.batches(_positive(args.batch_size, "--batch-size"), "saliency"):
        targets = _targets_for(ctx, args.channel, batch)
        used.extend(targets if isinstance(targets, list) else [targets] * batch.shape[0])
        parts.append(
            saliency_arrays(
                ctx.model,
                ctx.layer,
                batch,
                targets,
                method=args.method,
                smooth=args.smooth,
                sigma_multiplier=args.sigma_multiplier,
                abs=args.abs,
                reduction=args.reduction,
                seed=args.seed,
            ).detach()
        )
    result = torch.cat(parts)
    ctx.save_result(result)
    ctx.record["targets"] = used
    label = "guided" if args.method == "guided" else "vanilla"
    if args.smooth:
        label += f" SmoothGrad x{args.smooth}"
    for k in range(ctx.n_figures(result.shape[0])):
        what = f"channel {used[k]}" if ctx.layer is not None else f"class {used[k]}"
        fig = saliency_figure(
            result[k], ctx.display[k], sign="absolute_value", title=f"{label}, {what}"
        )
        ctx.save_figure(ctx.figure_name(k, "saliency"), fig)


_register(
    Subcommand(
        name="saliency",
        help="gradient (vanilla or guided, optionally SmoothGrad) of a channel or class",
        description="Saliency image: the gradient of a layer's channel (its spatial mean, or "
        "--reduction) or of a class logit with respect to the image. Writes result.npy "
        "(N, 3, H, W), signed unless --abs, and one figure per image. Without --layer the "
        "model output is explained (--channel is then the class; default the predicted one).",
        example=f"{PROG} saliency cat.jpg --model alexnet --weights alexnet.pth "
        "--layer conv5 --channel 122 --method guided --smooth 20 --out saliency/",
        add_arguments=_add_saliency,
        run=_run_saliency,
        needs_layer=False,
    )
)
