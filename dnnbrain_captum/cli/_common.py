"""Shared plumbing of the ``dnnbrain-captum`` command: the run context every subcommand
gets and image loading. The argument parser lives in :mod:`~dnnbrain_captum.cli._args`
(torch-free, for ``--help``), models and preprocessing in :mod:`~dnnbrain_captum.cli._model`,
the output folder in ``_outdir``; the parser's and models' names are re-exported here."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dnnbrain_captum.cli._args import (  # noqa: F401 - re-exported
    _ORDER,
    FIGURE_FORMATS,
    PROG,
    STREAM_FIGURES,
    SUBCOMMANDS,
    CLIError,
    Subcommand,
    _baseline_value,
    _channel_option,
    _common_options,
    _figure_options,
    _has_module,
    _int_list,
    _one_line,
    _pair_arg,
    _positive,
    _reduction_option,
    _register,
    _stream_options,
    _unit_option,
    _window,
    build_parser,
)
from dnnbrain_captum.cli._model import (  # noqa: F401 - re-exported
    _check_channels,
    _check_unit,
    _crop_size,
    _layer_shape,
    _normalizer,
    _preprocessing,
    _resolve_layer,
    _weights_entry,
    load_model,
)

# expected warnings that say nothing to a command-line user
_QUIET_WARNINGS = (
    ".*did not already require gradients.*",
    ".*Setting backward hooks on ReLU activations.*",
)


RESULT = "result.npy"  # every subcommand's main array; a streamed run's runner file too


@dataclass
class RunContext:
    """What every subcommand gets: the model, the chosen layer, the images, an output folder."""

    model: nn.Module
    model_name: str
    device: torch.device
    layer: nn.Module | None
    layer_name: str | None
    image_size: tuple[int, int]
    normalize: Callable[[Tensor], Tensor]
    mean: tuple[float, ...] | None = None  # the model's input normalisation (None: none)
    std: tuple[float, ...] | None = None
    images: Tensor | None = None  # model-ready (N, 3, H, W)
    display: Tensor | None = None  # the same images in [0, 1] (N, 3, H, W), for figures
    sources: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    out: Path = Path()
    files: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    figures: bool = True
    progress: bool = False
    geometry: Any = None  # io.Preprocess: resize the shorter side + centre crop (no statistics)
    figure_format: str = "png"
    dpi: int = 100
    max_figures: int | None = None  # --max-figures (saliency, occlusion, upsample); None: all

    def save_result(self, array: Tensor | np.ndarray, rows: str = "images") -> Path:
        """Write the run's main array as ``RESULT`` (the same name whatever the subcommand
        and however the images were given) and say so in ``results.json``."""
        path = self.save_array(RESULT, array)
        self.record["result"] = RESULT
        self.record["result_rows"] = rows
        return path

    def n_figures(self, n: int) -> int:
        """How many of ``n`` images get a figure: the first ``--max-figures`` (all without
        the option); the same in memory and streamed."""
        return n if self.max_figures is None else max(0, min(n, self.max_figures))

    def save_array(self, name: str, array: Tensor | np.ndarray) -> Path:
        """Write ``name`` (``.npy``) into the output folder."""
        data = array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)
        path = self.out / name
        np.save(path, data)
        self.files.append(name)
        return path

    def save_json(self, name: str, data: Any) -> Path:
        """Write ``name`` (``.json``) into the output folder."""
        path = self.out / name
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        self.files.append(name)
        return path

    def save_figure(self, name: str, fig: Any) -> Path | None:
        """Write a matplotlib figure (``--format``, ``--dpi``) unless ``--no-figures``.

        ``name`` may end in ``.png``: the extension follows ``--format``."""
        from dnnbrain_captum.visualization import save_figure

        if not self.figures:
            return None
        name = f"{Path(name).stem}.{self.figure_format}"
        path = self.out / name
        save_figure(fig, path, dpi=self.dpi)
        self.files.append(name)
        return path

    def batches(self, batch_size: int, desc: str) -> Iterator[tuple[int, Tensor]]:
        """``(start, batch)`` over the images, with a progress bar on long runs."""
        from tqdm.auto import tqdm

        assert self.images is not None
        n = self.images.shape[0]
        bar = tqdm(
            total=n,
            desc=desc,
            unit="img",
            disable=not self.progress or n <= batch_size,
            file=sys.stderr,
        )
        with bar:
            for start in range(0, n, batch_size):
                batch = self.images[start : start + batch_size]
                yield start, batch
                bar.update(batch.shape[0])

    def to_display(self, images: Tensor) -> Tensor:
        """Model-space images (N, 3, H, W) back to [0, 1] for figures."""
        shown = images.detach().cpu()
        if self.mean is not None and self.std is not None:
            std = torch.tensor(self.std, dtype=shown.dtype).view(1, -1, 1, 1)
            mean = torch.tensor(self.mean, dtype=shown.dtype).view(1, -1, 1, 1)
            shown = shown * std + mean
        return shown.clamp(0, 1)

    def figure_name(self, index: int, suffix: str) -> str:
        """``003_cat_saliency.png`` for image 3 named cat.jpg (extension: ``--format``)."""
        return f"{index:03d}_{self.names[index]}_{suffix}.{self.figure_format}"


def _safe_stem(path: Path) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)
    return keep[:60] or "image"


def _load_images(
    args: argparse.Namespace, geometry: Any, normalize: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor, list[str], list[str]]:
    size = _crop_size(geometry)
    from dnnbrain_captum.io import find_images, load_image

    resize = geometry
    display: list[Tensor] = []
    sources: list[str] = []
    names: list[str] = []
    if args.images:
        try:
            paths = find_images(args.images)
        except (FileNotFoundError, ValueError) as err:
            raise CLIError(_one_line(err)) from None
        for path in paths:
            try:
                display.append(resize(load_image(path)))
            except (FileNotFoundError, ValueError) as err:
                raise CLIError(_one_line(err)) from None
            sources.append(str(path))
            names.append(_safe_stem(path))
    if args.digits is not None:
        if args.digits < 1:
            raise CLIError(f"--digits must be >= 1, got {args.digits}")
        from dnnbrain_captum.models import digits_images

        digits, labels = digits_images(n=args.digits)
        if digits.shape[-2:] != torch.Size(size):
            digits = torch.stack([resize(d) for d in digits])
        for k in range(digits.shape[0]):
            display.append(digits[k])
            sources.append(f"digits:test[{k}] (label {int(labels[k])})")
            names.append(f"digit{k}_label{int(labels[k])}")
    stacked = torch.stack(display) if display else torch.empty(0, 3, *size)
    return normalize(stacked), stacked, sources, names


def _targets_for(ctx: RunContext, channel: int | None, batch: Tensor) -> Any:
    """The target of a batch: the channel, or each image's predicted class for the output."""
    if channel is not None:
        return channel
    if ctx.layer is not None:
        raise CLIError(f"--channel is required with --layer {ctx.layer_name} (0-based)")
    with torch.no_grad():
        logits = ctx.model(batch)
    return logits.argmax(dim=1).tolist()


def _make_context(
    args: argparse.Namespace, command: Subcommand, load_images: bool = True
) -> RunContext:
    """The run context of ``command`` from the parsed ``args``: the model on its device, the
    layer, the preprocessing and (with ``load_images``) the images; checks the channel/unit."""
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise CLIError(f"unknown --device {args.device!r}") from None
    seed = getattr(args, "seed", 0)
    model, entry, random_weights = _model_on_device(args, device, seed)
    layer = _resolve_layer(model, args.layer)
    if command.needs_layer and layer is None:
        from dnnbrain_captum._utils.layers import layer_names

        names = ", ".join(layer_names(model)[-6:])
        raise CLIError(f"{command.name} needs --layer (a module path or alias, e.g. {names})")
    step = _preprocessing(args, model, entry)
    geometry = type(step)(size=step.size, crop=step.crop, interpolation=step.interpolation)
    size = _crop_size(step)
    normalize = _normalizer(step)
    ctx = RunContext(
        model=model,
        model_name=args.model,
        device=device,
        layer=layer,
        layer_name=args.layer,
        image_size=size,
        normalize=normalize,
        mean=step.mean,
        std=step.std,
        figures=not getattr(args, "no_figures", False),
        progress=not args.quiet and sys.stderr.isatty(),
        geometry=geometry,
        figure_format=getattr(args, "format", "png"),
        dpi=_positive(getattr(args, "dpi", 100), "--dpi"),
        max_figures=getattr(args, "max_figures", None),
    )
    if ctx.max_figures is not None and ctx.max_figures < 0:
        raise CLIError(f"--max-figures must be >= 0, got {ctx.max_figures}")
    _record_setup(ctx, step, entry, random_weights, seed)
    if command.takes_images and load_images:
        _attach_images(ctx, args, command, geometry, normalize)
    _check_targets(ctx, args)
    return ctx


def _model_on_device(
    args: argparse.Namespace, device: torch.device, seed: int
) -> tuple[nn.Module, Any, bool]:
    """``--model``/``--weights`` loaded and moved to ``device``; also its weights entry and
    whether its weights are random (noted on stderr unless ``--quiet``)."""
    model = load_model(args.model, args.weights, seed=seed)
    entry = _weights_entry(args.model, args.weights)
    random_weights = args.model != "digits" and args.weights is None
    if random_weights and not args.quiet:
        sys.stderr.write(
            f"{PROG} {args.command}: note: {args.model} has random weights (seeded with --seed "
            f"{seed}); pass --weights for trained ones\n"
        )
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as err:
        raise CLIError(f"--device {args.device}: {_one_line(err)}") from None
    return model, entry, random_weights


def _record_setup(ctx: RunContext, step: Any, entry: Any, random_weights: bool, seed: int) -> None:
    """Record the preprocessing, the seed of random weights and the model's class names (when
    it has them)."""
    ctx.record["preprocessing"] = {
        "resize_shorter_side": step.size,
        "center_crop": step.crop,
        "mean": step.mean,
        "std": step.std,
        "interpolation": step.interpolation,
    }
    if random_weights:
        ctx.record["random_weights_seed"] = seed
    from dnnbrain_captum.io import class_names

    categories = class_names(entry)
    if categories is not None:
        ctx.record["class_names"] = categories


def _attach_images(
    ctx: RunContext,
    args: argparse.Namespace,
    command: Subcommand,
    geometry: Any,
    normalize: Callable[[Tensor], Tensor],
) -> None:
    """Load the command's images into ``ctx`` (refused when it needs some and there are none)."""
    images, display, sources, names = _load_images(args, geometry, normalize)
    if command.needs_images and images.shape[0] == 0:
        raise CLIError(f"{command.name} needs images: give files or folders, or --digits N")
    if images.shape[0] > 0:
        ctx.images = images.to(ctx.device)
        ctx.display = display
        ctx.sources, ctx.names = sources, names


def _check_targets(ctx: RunContext, args: argparse.Namespace) -> None:
    """Refuse a ``--channel`` or ``--unit`` that the chosen layer (or the output) lacks."""
    channel = getattr(args, "channel", None)
    if channel is not None:
        _check_channels(ctx, channel if isinstance(channel, list) else [channel])
    unit = getattr(args, "unit", None)
    if unit is not None:
        _check_unit(ctx, unit)


def _arguments_record(args: argparse.Namespace) -> dict[str, Any]:
    record = {}
    for key, value in vars(args).items():
        if key.startswith("_"):
            continue
        if isinstance(value, Path):
            value = str(value)
        record[key] = value
    return record
