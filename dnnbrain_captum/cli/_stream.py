"""Streamed runs of ``dnnbrain-captum``: a folder of images (or ``--stream``) through
:func:`dnnbrain_captum.run_over` into a resumable runner folder."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dnnbrain_captum.cli._common import (
    CLIError,
    RunContext,
    _one_line,
    _positive,
    _safe_stem,
)
from dnnbrain_captum.cli.maps import (
    occlusion_options,
)
from dnnbrain_captum.cli.saliency import (
    saliency_arrays,
)

# ----------------------------------------------------------------------------- streaming

RUN_MANIFEST = "manifest.json"  # written by dnnbrain_captum.run_over
RUN_RESULT = "result.npy"
RUN_CHUNKS = "chunks"
RUN_PARTIAL = ("result.partial.npy", "result.partial.done")  # a run being filled in place
PREDICTED = "predicted_classes"  # sub-folder: a run_over folder of each image's predicted class


class _Stimuli(torch.utils.data.Dataset):
    """Model-ready items ``(image, index)``: the IMAGE files and folders, read lazily, then the
    ``--digits`` images. ``ids`` are the files' paths relative to their common folder."""

    def __init__(
        self,
        images: Sequence[str],
        digits: Tensor | None,
        digit_sources: list[str],
        size: Any,  # io.Preprocess: resize the shorter side + centre crop
        mean: tuple[float, ...] | None,
        std: tuple[float, ...] | None,
    ) -> None:
        from dnnbrain_captum.io import ImageFolderDataset, Preprocess

        self.files = (
            ImageFolderDataset(
                images, transform=Preprocess(size.size, size.crop, mean, std, size.interpolation)
            )
            if images
            else None
        )
        self.size = size
        self.digits = digits
        self.normalize = Preprocess(mean=mean, std=std) if mean is not None else None
        paths = self.files.paths if self.files is not None else []
        self.n_files = len(paths)
        self.sources = [str(p) for p in paths] + digit_sources
        self.names = [_safe_stem(p) for p in paths] + [
            source.split(" ")[0].replace(":", "_").replace("[", "").replace("]", "")
            for source in digit_sources
        ]
        self.ids = (self.files.ids if self.files is not None else []) + digit_sources

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if index < self.n_files:
            assert self.files is not None
            return self.files[index]
        assert self.digits is not None
        image = self.digits[index - self.n_files]
        return (self.normalize(image) if self.normalize is not None else image), index

    def display(self, index: int) -> Tensor:
        """Item ``index`` in [0, 1] at the model's size, for figures."""
        from dnnbrain_captum.io import load_image

        if index < self.n_files:
            assert self.files is not None
            return self.size(load_image(self.files.paths[index]))
        assert self.digits is not None
        return self.digits[index - self.n_files]


def _stimuli(args: argparse.Namespace, ctx: RunContext) -> _Stimuli:
    digits, digit_sources = None, []
    if args.digits is not None:
        if args.digits < 1:
            raise CLIError(f"--digits must be >= 1, got {args.digits}")
        from dnnbrain_captum.models import digits_images

        digits, labels = digits_images(n=args.digits)
        if digits.shape[-2:] != torch.Size(ctx.image_size):
            digits = torch.stack([ctx.geometry(d) for d in digits])
        digit_sources = [f"digits:test[{k}] (label {int(labels[k])})" for k in range(len(labels))]
    try:
        data = _Stimuli(args.images, digits, digit_sources, ctx.geometry, ctx.mean, ctx.std)
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(_one_line(err)) from None
    if len(data) == 0:
        raise CLIError(f"{args.command} needs images: give files or folders, or --digits N")
    if not getattr(args, "skip_unreadable", False):
        _refuse_unreadable(data, hasattr(args, "skip_unreadable"))  # before anything is written
    return data


def _refuse_unreadable(data: _Stimuli, can_skip: bool) -> None:
    """One line naming the first unreadable image file (and how many more), decoding each once."""
    from dnnbrain_captum.io import check_images

    bad = check_images(data.files.paths) if data.files is not None else []
    if bad:
        more = f" (and {len(bad) - 1} more unreadable)" if len(bad) > 1 else ""
        hint = ", or add --skip-unreadable" if can_skip else ""
        raise CLIError(f"{_one_line(bad[0])}{more}; nothing was written: fix or remove it{hint}")


class _PredictedClass:
    """``attribute(x)`` = the model's predicted class of each image (an int64 vector)."""

    def __init__(self, model: nn.Module) -> None:
        self.forward_func = model

    def attribute(self, inputs: Tensor, target: Any = None) -> Tensor:
        with torch.no_grad():
            return self.forward_func(inputs).argmax(dim=1)


class _SmoothGradSaliency:
    """``saliency --smooth N`` as one attribution: :func:`saliency_arrays` on a batch (noise
    seeded by ``noise_seed`` before each image, as in the in-memory run)."""

    def __init__(self, model: nn.Module, layer: nn.Module | None, method: str) -> None:
        from dnnbrain_captum.attr import GuidedSaliencyImage, VanillaSaliencyImage

        self.forward_func, self.layer, self.method = model, layer, method
        cls = GuidedSaliencyImage if method == "guided" else VanillaSaliencyImage
        self.attribution_method = cls(model, layer)  # recorded as inner_class in the manifest

    def attribute(self, inputs: Tensor, target: Any = None, **kwargs: Any) -> Tensor:
        seed = kwargs.pop("noise_seed")
        return saliency_arrays(
            self.forward_func, self.layer, inputs, target, method=self.method, seed=seed, **kwargs
        ).detach()


@dataclass
class StreamJob:
    """What a streamed subcommand runs: ``run_over(attribution, ..., **kwargs)`` and a figure."""

    attribution: Any
    kwargs: dict[str, Any]
    batch_size: int
    target: Any  # an int channel, or PREDICTED (each image's predicted class)
    figure: Callable[[Tensor, Tensor, Any], Any]  # (result row, display image, target) -> Figure
    suffix: str
    record: dict[str, Any] = field(default_factory=dict)


def _stream_target(ctx: RunContext, channel: int | None) -> Any:
    if channel is not None:
        return channel
    if ctx.layer is not None:
        raise CLIError(f"--channel is required with --layer {ctx.layer_name} (0-based)")
    return PREDICTED


def _what(ctx: RunContext, target: Any) -> str:
    return f"channel {target}" if ctx.layer is not None else f"class {target}"


def _stream_saliency(args: argparse.Namespace, ctx: RunContext) -> StreamJob:
    from dnnbrain_captum.attr import GuidedSaliencyImage, VanillaSaliencyImage
    from dnnbrain_captum.visualization import saliency_figure

    if args.smooth < 0:
        raise CLIError(f"--smooth must be >= 0, got {args.smooth}")
    if args.sigma_multiplier < 0:
        raise CLIError(f"--sigma-multiplier must be >= 0, got {args.sigma_multiplier}")
    kwargs: dict[str, Any] = {"abs": args.abs}
    if ctx.layer is not None:
        kwargs["reduction"] = args.reduction
    attribution: Any
    if args.smooth > 0:
        attribution = _SmoothGradSaliency(ctx.model, ctx.layer, args.method)
        kwargs.update(
            smooth=args.smooth, sigma_multiplier=args.sigma_multiplier, noise_seed=args.seed
        )
    else:
        cls = GuidedSaliencyImage if args.method == "guided" else VanillaSaliencyImage
        attribution = cls(ctx.model, ctx.layer)
    label = "guided" if args.method == "guided" else "vanilla"
    if args.smooth:
        label += f" SmoothGrad x{args.smooth}"
    return StreamJob(
        attribution,
        kwargs,
        _positive(args.batch_size, "--batch-size"),
        _stream_target(ctx, args.channel),
        lambda row, shown, t: saliency_figure(
            row, shown, sign="absolute_value", title=f"{label}, {_what(ctx, t)}"
        ),
        "saliency",
    )


def _stream_occlusion(args: argparse.Namespace, ctx: RunContext) -> StreamJob:
    from dnnbrain_captum.attr import OccluderDiscrepancyMapping
    from dnnbrain_captum.visualization import occlusion_figure

    options = occlusion_options(args, ctx.model_name)
    window = options["sliding_window_shapes"]
    if window[0] > ctx.image_size[0] or window[1] > ctx.image_size[1]:
        raise CLIError(
            f"--window {window[0]} {window[1]} is larger than the {ctx.image_size[0]}x"
            f"{ctx.image_size[1]} images"
        )
    record = {"options": {k: v for k, v in options.items() if k != "perturbations_per_eval"}}
    return StreamJob(
        OccluderDiscrepancyMapping(ctx.model, ctx.layer),
        options,
        _positive(args.batch_size, "--batch-size"),
        _stream_target(ctx, args.channel),
        lambda row, shown, t: occlusion_figure(
            row, shown, window, options["strides"], title=f"occlusion, {_what(ctx, t)}"
        ),
        "occlusion",
        record,
    )


def _stream_upsample(args: argparse.Namespace, ctx: RunContext) -> StreamJob:
    from dnnbrain_captum.attr import UpsamplingActivationMapping
    from dnnbrain_captum.visualization import activation_map_figure

    if args.channel is None:
        raise CLIError(f"--channel is required with --layer {ctx.layer_name} (0-based)")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise CLIError(f"--threshold must lie in [0, 1], got {args.threshold}")
    if args.binarize and args.threshold is None:
        raise CLIError("--binarize needs --threshold")
    kwargs = {
        "interpolate_mode": args.interpolate,
        "threshold": args.threshold,
        "binarize": args.binarize,
    }
    return StreamJob(
        UpsamplingActivationMapping(ctx.model, ctx.layer),
        kwargs,
        _positive(args.batch_size, "--batch-size"),
        args.channel,
        lambda row, shown, t: activation_map_figure(
            row, shown, title=f"{ctx.layer_name} channel {t}"
        ),
        "upsample",
    )


STREAMED: dict[str, Callable[[argparse.Namespace, RunContext], StreamJob]] = {
    "saliency": _stream_saliency,
    "occlusion": _stream_occlusion,
    "upsample": _stream_upsample,
}


def _streaming(args: argparse.Namespace) -> bool:
    """Whether this run goes through the runner: --stream, or a folder among the images."""
    if args.command not in STREAMED:
        return False
    if args.stream is not None:
        return bool(args.stream)
    return any(Path(p).is_dir() for p in args.images)


def _cli_wording(message: str) -> str:
    """The runner's hints in command-line terms."""
    return (
        _one_line(message)
        .replace("overwrite=True", "--overwrite")
        .replace("pass on_error='skip'", "add --skip-unreadable")
        .replace("on_error='skip'", "--skip-unreadable")
        .replace("rerun run_over with the same arguments", "rerun the same command")
    )
